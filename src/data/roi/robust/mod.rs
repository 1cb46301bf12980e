//! The default ROI detector: rectangle outlines of any line width, drawn in any green.
//!
//! 1. Green per pixel: a clear excess `g - max(r, b)` (zero for grey, high for any green
//!    paint, independent of brightness, so it survives JPEG, which keeps luminance sharp and
//!    smears only the colour), or, for thin lines whose colour JPEG mixed with a red or orange
//!    background, a shift towards green against the pixels two steps away across the line.
//! 2. Straight runs of green pixels (gaps of a couple of pixels tolerated) are grouped into
//!    horizontal and vertical bars.
//! 3. Four bars whose ends meet make a rectangle candidate; every side must be covered along
//!    its length, so calipers, text, crosses and two- or three-sided brackets never qualify.
//! 4. Each side is then placed to the pixel on full-resolution luminance: JPEG's 4:2:0
//!    chroma subsampling paints green one pixel beside a thin line, but the painted pixels
//!    alone differ in brightness from both neighbouring rows.
//! 5. A drawn box has a real inside, mostly free of green, and a small one does not stand
//!    among other green marks: letters and rings are not boxes.
//!
//! `planes` computes the masks (step 1), `bars` steps 2 and the thin-line extension, `sides`
//! measures and places one side (3 and 4), `rectangles` assembles and checks (3 to 5).

use image::RgbImage;

mod bars;
mod corners;
mod planes;
mod rectangles;
mod sides;

use super::Roi;
use bars::{group_runs, straight_runs, with_faint_extensions, Bar, MIN_SIDE};
use corners::corner_fill;
use planes::{Planes, Scratch, SCRATCH};
use rectangles::{assemble, place_sides, refine_and_verify, score, Scored};
use sides::Side;

/// A readable account of what [`detect`] saw (bars, candidates and why they failed), for
/// diagnosing a miss.
pub fn explain(img: &RgbImage) -> String {
    use std::fmt::Write;
    let planes = Planes::new(img, &mut Scratch::default());
    let (hbars, vbars) = bars_of(&planes);
    let mut s = String::new();
    writeln!(s, "horizontal bars (rows lo..hi, columns start..end):").unwrap();
    for b in &hbars {
        writeln!(s, "  {b:?}").unwrap();
    }
    writeln!(s, "vertical bars (columns lo..hi, rows start..end):").unwrap();
    for b in &vbars {
        writeln!(s, "  {b:?}").unwrap();
    }
    for c in assemble(&hbars, &vbars) {
        let result = score(&planes, c).map(|sc| {
            let bands = place_sides(&planes, &sc);
            let corners = corner_fill(&planes, &bands);
            (sc.coverage, bands, corners, refine_and_verify(&planes, &sc))
        });
        writeln!(s, "candidate {c:?}\n  -> {result:?}").unwrap();
    }
    s
}

/// All rectangle outlines found in `img`, largest first.
pub fn detect(img: &RgbImage) -> Vec<Roi> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let planes = Planes::new(img, &mut scratch);
        let rois = detect_in(&planes);
        planes.recycle(&mut scratch);
        rois
    })
}

/// The horizontal and vertical bars that may be sides of an outline.
fn bars_of(planes: &Planes) -> (Vec<Bar>, Vec<Bar>) {
    let (hruns, vruns) = straight_runs(planes);
    (
        with_faint_extensions(planes, group_runs(hruns), Side::Top),
        with_faint_extensions(planes, group_runs(vruns), Side::Left),
    )
}

fn detect_in(planes: &Planes) -> Vec<Roi> {
    if planes.green_h_count < 4 * MIN_SIDE {
        return Vec::new();
    }
    let (hbars, vbars) = bars_of(planes);
    let mut scored: Vec<Scored> = assemble(&hbars, &vbars)
        .into_iter()
        .filter_map(|c| score(planes, c))
        .collect();
    // Several bar combinations describe one outline: the best-covered is placed and checked
    // first, and candidates overlapping an accepted box are not looked at again.
    scored.sort_by(|a, b| b.coverage.total_cmp(&a.coverage));
    let mut kept: Vec<Roi> = Vec::new();
    for s in &scored {
        if kept.iter().any(|k| k.bbox.iou(&s.rough) >= 0.5) {
            continue;
        }
        if let Some(roi) = refine_and_verify(planes, s) {
            if kept.iter().all(|k| k.bbox.iou(&roi.bbox) < 0.5) {
                kept.push(roi);
            }
        }
    }
    kept.sort_by_key(|r| std::cmp::Reverse(r.bbox.area()));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::roi::PixelBox;

    fn grey(w: u32, h: u32, v: u8) -> RgbImage {
        RgbImage::from_pixel(w, h, image::Rgb([v, v, v]))
    }

    fn outline(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, t: u32) {
        for y in y0..y1 {
            for x in x0..x1 {
                if x < x0 + t || x >= x1 - t || y < y0 + t || y >= y1 - t {
                    img.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
    }

    #[test]
    fn degenerate_images_do_not_break_it() {
        let green = image::Rgb([0, 255, 0]);
        for (w, h) in [
            (1, 1),
            (1, 60),
            (60, 1),
            (2, 2),
            (3, 3),
            (5, 200),
            (200, 5),
            (13, 13),
        ] {
            assert!(
                detect(&RgbImage::from_pixel(w, h, green)).is_empty(),
                "{w}x{h}"
            );
            let mut checker = RgbImage::from_pixel(w, h, image::Rgb([30, 30, 30]));
            for (x, y, p) in checker.enumerate_pixels_mut() {
                if (x + y) % 2 == 0 {
                    *p = green;
                }
            }
            let _ = detect(&checker);
        }
        // An outline that is the image border itself.
        let mut framed = grey(40, 30, 80);
        outline(&mut framed, 0, 0, 40, 30, 2);
        let rois = detect(&framed);
        assert_eq!(rois.len(), 1);
        assert_eq!(
            rois[0].bbox,
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 40,
                y1: 30
            }
        );
    }

    #[test]
    fn finds_one_pixel_outline_exactly() {
        let mut img = grey(64, 48, 90);
        outline(&mut img, 10, 8, 40, 30, 1);
        let rois = detect(&img);
        assert_eq!(rois.len(), 1);
        assert_eq!(
            rois[0].bbox,
            PixelBox {
                x0: 10,
                y0: 8,
                x1: 40,
                y1: 30
            }
        );
        assert_eq!(rois[0].line, Some([1, 1, 1, 1]));
    }

    #[test]
    fn filled_block_and_bracket_are_not_boxes() {
        let mut img = grey(80, 80, 40);
        for y in 5..25 {
            for x in 5..30 {
                img.put_pixel(x, y, image::Rgb([0, 255, 0]));
            }
        }
        // three sides of a rectangle
        outline(&mut img, 40, 40, 70, 70, 2);
        for y in 42..68 {
            for x in 68..70 {
                img.put_pixel(x, y, image::Rgb([40, 40, 40]));
            }
        }
        assert!(detect(&img).is_empty());
    }

    #[test]
    fn nested_and_separate_boxes_all_found_largest_first() {
        let mut img = grey(120, 100, 60);
        outline(&mut img, 5, 5, 70, 60, 3);
        outline(&mut img, 20, 20, 40, 40, 1);
        outline(&mut img, 80, 60, 110, 90, 2);
        let rois = detect(&img);
        let boxes: Vec<_> = rois.iter().map(|r| r.bbox).collect();
        assert_eq!(boxes.len(), 3, "{boxes:?}");
        assert_eq!(
            boxes[0],
            PixelBox {
                x0: 5,
                y0: 5,
                x1: 70,
                y1: 60
            }
        );
        assert_eq!(
            boxes[1],
            PixelBox {
                x0: 80,
                y0: 60,
                x1: 110,
                y1: 90
            }
        );
        assert_eq!(
            boxes[2],
            PixelBox {
                x0: 20,
                y0: 20,
                x1: 40,
                y1: 40
            }
        );
    }

    /// A rectangle of the given outer box whose sides have their own widths (top, right,
    /// bottom, left) and whose outer corners are cut round with radius `r` (0: square).
    fn shape(img: &mut RgbImage, [x0, y0, x1, y1]: [u32; 4], [t, r_, b, l]: [u32; 4], r: u32) {
        let rounded_out = |x: u32, y: u32| {
            let cx = if x < x0 + r {
                x0 + r
            } else if x >= x1 - r {
                x1 - 1 - r
            } else {
                x
            };
            let cy = if y < y0 + r {
                y0 + r
            } else if y >= y1 - r {
                y1 - 1 - r
            } else {
                y
            };
            let (dx, dy) = (f64::from(x) - f64::from(cx), f64::from(y) - f64::from(cy));
            dx * dx + dy * dy > f64::from(r * r)
        };
        for y in y0..y1 {
            for x in x0..x1 {
                let on_line = x < x0 + l || x >= x1 - r_ || y < y0 + t || y >= y1 - b;
                if on_line && !rounded_out(x, y) {
                    img.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
    }

    #[test]
    fn a_bold_letters_bowl_is_not_a_box() {
        // Rounded corners of the stroke's size: an "o" or the bowl of a "g".
        let mut img = grey(120, 90, 128);
        shape(&mut img, [10, 10, 52, 50], [9, 13, 9, 13], 12);
        assert!(detect(&img).is_empty(), "{:?}", detect(&img));
        // The same with square corners and one width is a (thick) box.
        let mut img = grey(120, 90, 128);
        shape(&mut img, [10, 10, 52, 50], [9, 9, 9, 9], 0);
        assert_eq!(detect(&img).len(), 1);
        // Square corners but uneven strokes round a counter hardly wider than them: a "D".
        let mut img = grey(120, 90, 128);
        shape(&mut img, [10, 10, 31, 37], [9, 5, 7, 8], 0);
        assert!(detect(&img).is_empty(), "{:?}", detect(&img));
    }

    #[test]
    fn a_small_bowl_of_uneven_strokes_is_not_a_box() {
        // Square corners, but top and bottom 2 px apart in width: an "O" or "0" of a bold
        // face at this size.
        let mut img = grey(80, 60, 128);
        shape(&mut img, [10, 10, 30, 34], [3, 5, 5, 5], 0);
        assert!(detect(&img).is_empty(), "{:?}", detect(&img));
        // A small box whose two directions differ (JPEG widens one) but whose opposite sides
        // agree is drawn.
        let mut img = grey(80, 60, 128);
        shape(&mut img, [10, 10, 30, 34], [4, 6, 4, 6], 0);
        assert_eq!(detect(&img).len(), 1);
        // The bowl of a "b": sides 2 px uneven and its stem carrying the left side on up.
        let mut img = grey(80, 60, 128);
        shape(&mut img, [10, 20, 28, 40], [6, 4, 6, 5], 0);
        for y in 5..20 {
            for x in 10..15 {
                img.put_pixel(x, y, image::Rgb([0, 255, 0]));
            }
        }
        assert!(detect(&img).is_empty(), "{:?}", detect(&img));
        // The same bowl without its stem is a (small, thick) box.
        let mut img = grey(80, 60, 128);
        shape(&mut img, [10, 20, 28, 40], [6, 4, 6, 5], 0);
        assert_eq!(detect(&img).len(), 1);
    }

    #[test]
    fn a_label_touching_a_side_leaves_the_box_found() {
        let mut img = grey(160, 120, 70);
        outline(&mut img, 20, 30, 60, 70, 2);
        // A "T" set against the right side at the top corner, its bar in line with the top
        // side: the top bar runs 9 px past the corner, more than the bottom's coverage allows
        // over the span of all four bars.
        for (xs, ys) in [(60..69, 30..32), (66..68, 30..42)] {
            for y in ys {
                for x in xs.clone() {
                    img.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
        let boxes: Vec<_> = detect(&img).iter().map(|r| r.bbox).collect();
        assert_eq!(
            boxes,
            vec![PixelBox {
                x0: 20,
                y0: 30,
                x1: 60,
                y1: 70
            }]
        );
    }
}
