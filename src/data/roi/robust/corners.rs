//! What sets a drawn outline apart from a letter: a pen drawing a rectangle fills its corners
//! (square, or rounded by at most half the line width where OpenCV joins thick lines) and
//! draws all four sides with the same width. The bowl of a "g", "o", "D" or "0" has at least
//! one corner rounded well beyond its stroke, or strokes that thin and thicken around a
//! counter hardly wider than they are.

use super::super::PixelBox;
use super::planes::Planes;
use super::rectangles::SMALL_BOX;

/// The four painted sides of an outline, placed to the pixel: rows `top` and `bottom`,
/// columns `left` and `right`, each as `(first, last)` inclusive.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bands {
    pub(super) top: (u32, u32),
    pub(super) right: (u32, u32),
    pub(super) bottom: (u32, u32),
    pub(super) left: (u32, u32),
}

impl Bands {
    /// Line width per side: top, right, bottom, left.
    pub(super) fn widths(&self) -> [u32; 4] {
        let w = |(a, b): (u32, u32)| b - a + 1;
        [w(self.top), w(self.right), w(self.bottom), w(self.left)]
    }

    /// The square where two sides cross at each corner: top-left, top-right, bottom-right,
    /// bottom-left.
    fn corner_squares(&self) -> [PixelBox; 4] {
        let square = |(x0, x1): (u32, u32), (y0, y1): (u32, u32)| PixelBox {
            x0,
            y0,
            x1: x1 + 1,
            y1: y1 + 1,
        };
        [
            square(self.left, self.top),
            square(self.right, self.top),
            square(self.right, self.bottom),
            square(self.left, self.bottom),
        ]
    }
}

/// Corners where a line under this width (pixels) crosses are not judged: JPEG and a pixel's
/// error in placing a thin side leave its few corner pixels half empty, and letters drawn
/// that thin do not close into four straight sides.
const MIN_JUDGED_WIDTH: u32 = 3;

/// Most of a corner square that may lack green. OpenCV's round joins leave
/// `(1 - pi/4) / 4`, about 5%, of it empty; JPEG's colour blur a little more along its outer
/// edges. A letter's bowl leaves a quarter or more.
const MAX_CORNER_GAP: f32 = 0.25;

/// Fraction of each corner square that is green, in the order of `Bands::corner_squares`
/// (`None` where the square is too small to judge). The square's outermost pixel is left
/// out: JPEG blends it with the background from two sides at once.
pub(super) fn corner_fill(planes: &Planes, bands: &Bands) -> [Option<f32>; 4] {
    let outermost = [
        |b: &PixelBox| (b.x0, b.y0),
        |b: &PixelBox| (b.x1 - 1, b.y0),
        |b: &PixelBox| (b.x1 - 1, b.y1 - 1),
        |b: &PixelBox| (b.x0, b.y1 - 1),
    ];
    let squares = bands.corner_squares();
    std::array::from_fn(|i| {
        let sq = &squares[i];
        if sq.width().min(sq.height()) < MIN_JUDGED_WIDTH {
            return None;
        }
        let area = sq.area() as u32;
        let (x, y) = outermost[i](sq);
        let corner = PixelBox {
            x0: x,
            y0: y,
            x1: x + 1,
            y1: y + 1,
        };
        let green = planes.green_count(sq) - planes.green_count(&corner);
        Some(green as f32 / (area - 1) as f32)
    })
}

/// Sides whose widths differ by this much (pixels) were not drawn with one pen...
const UNEVEN_WIDTHS: u32 = 3;

/// ...when the hollow they enclose is, in its longer direction, under this many times the
/// widest side: the small counter of a bold "D", "R" or "8". A drawn box this small for its
/// line is rare, and its sides are even.
const SMALL_HOLLOW: u32 = 2;

/// Within a small outline (under `SMALL_BOX`) opposite sides differing by this much were
/// not drawn with one pen, whatever the hollow: the bowl of an "0" or "O" thickens and thins
/// by 2 px or more at this size. JPEG's colour blur can widen a pen's sides by 2 px too, but
/// the two of one direction alike, so only opposite sides are compared.
pub(super) const SMALL_UNEVEN: u32 = 2;

/// A hollow narrower than this (pixels) and than the widest side is the gap between a word's
/// tops and its baseline, or a letter's slit, not the inside of a drawn box.
const SLIT: u32 = 6;

/// Whether the sides look drawn with one pen around a hollow (see the module's account): even
/// widths, or a hollow large for the line; and the hollow not a slit.
pub(super) fn one_pen(bands: &Bands) -> bool {
    let widths = bands.widths();
    let (thin, wide) = (
        *widths.iter().min().expect("four sides"),
        *widths.iter().max().expect("four sides"),
    );
    let hollow_w = bands.right.0.saturating_sub(bands.left.1 + 1);
    let hollow_h = bands.bottom.0.saturating_sub(bands.top.1 + 1);
    let narrow = hollow_w.min(hollow_h);
    let extent = (bands.right.1 + 1 - bands.left.0).max(bands.bottom.1 + 1 - bands.top.0);
    let [t, r, b, l] = widths;
    let even = if extent < SMALL_BOX {
        t.abs_diff(b) < SMALL_UNEVEN && l.abs_diff(r) < SMALL_UNEVEN
    } else {
        wide - thin < UNEVEN_WIDTHS || hollow_w.max(hollow_h) >= SMALL_HOLLOW * wide
    };
    even && (narrow >= SLIT || narrow >= wide)
}

/// Whether the outline looks drawn: corners filled (see the module's account), no side
/// running on past both of its corners (a label's letters under a longer line), and sides
/// drawn with one pen.
pub(super) fn drawn_corners(planes: &Planes, bands: &Bands) -> bool {
    corner_fill(planes, bands)
        .iter()
        .flatten()
        .all(|&fill| fill >= 1.0 - MAX_CORNER_GAP)
        && run_on_ends(planes, bands).iter().all(|&n| n < 2)
        && one_pen(bands)
}

/// Length, beyond a corner, over which a side must not go on at full width: longer than
/// JPEG's colour bleeds past the end of a line 2 px or wider.
fn run_on_length(bands: &Bands) -> u32 {
    bands.widths().into_iter().max().unwrap_or(1) + 4
}

/// Per side (top, right, bottom, left), how many of its two ends run on past the corner as a
/// line of the same width: the top of a "b" or "d" goes on into its stem, and a label's
/// letters under a longer line make a box with that line only where it runs on both ways.
pub(super) fn run_on_ends(planes: &Planes, bands: &Bands) -> [u8; 4] {
    let k = run_on_length(bands);
    let (w, h) = (planes.width, planes.height);
    let (x0, x1) = (bands.left.0, bands.right.1 + 1);
    let (y0, y1) = (bands.top.0, bands.bottom.1 + 1);
    let full = |b: PixelBox| {
        b.area() > 0 && b.x1 <= w && b.y1 <= h && planes.green_count(&b) as u64 * 10 >= b.area() * 9
    };
    let across = |(lo, hi): (u32, u32)| (lo, hi + 1);
    let horizontal = |(r0, r1): (u32, u32)| {
        [
            x0.checked_sub(k).map(|a| PixelBox {
                x0: a,
                x1: x0,
                y0: r0,
                y1: r1,
            }),
            Some(PixelBox {
                x0: x1,
                x1: x1 + k,
                y0: r0,
                y1: r1,
            }),
        ]
    };
    let vertical = |(c0, c1): (u32, u32)| {
        [
            y0.checked_sub(k).map(|a| PixelBox {
                x0: c0,
                x1: c1,
                y0: a,
                y1: y0,
            }),
            Some(PixelBox {
                x0: c0,
                x1: c1,
                y0: y1,
                y1: y1 + k,
            }),
        ]
    };
    // A 1-px line's colour bleeds too far past its ends to be judged.
    let count = |(lo, hi): (u32, u32), ends: [Option<PixelBox>; 2]| {
        if hi == lo {
            return 0;
        }
        ends.into_iter().flatten().filter(|&b| full(b)).count() as u8
    };
    [
        count(bands.top, horizontal(across(bands.top))),
        count(bands.right, vertical(across(bands.right))),
        count(bands.bottom, horizontal(across(bands.bottom))),
        count(bands.left, vertical(across(bands.left))),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::planes::Scratch;
    use super::*;
    use image::RgbImage;

    /// A grey image with green rectangles `[x0, y0, x1, y1)`.
    fn with_green(rects: &[[u32; 4]]) -> RgbImage {
        let mut img = RgbImage::from_pixel(100, 60, image::Rgb([80, 80, 80]));
        for &[x0, y0, x1, y1] in rects {
            for y in y0..y1 {
                for x in x0..x1 {
                    img.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
        img
    }

    /// A small box hanging from a longer line (letters under a box's side) shares its top
    /// side with the line, which runs on past both corners; alone, it is a drawn box.
    #[test]
    fn a_side_running_on_both_ways_is_not_a_drawn_box() {
        let hanging = [[30, 10, 33, 27], [60, 10, 63, 27], [30, 24, 63, 27]];
        let bands = Bands {
            top: (10, 12),
            right: (60, 62),
            bottom: (24, 26),
            left: (30, 32),
        };
        let under_line = with_green(&[&hanging[..], &[[5, 10, 95, 13]]].concat());
        let mut scratch = Scratch::default();
        let planes = Planes::new(&under_line, &mut scratch);
        assert_eq!(run_on_ends(&planes, &bands), [2, 0, 0, 0]);
        assert!(!drawn_corners(&planes, &bands));

        let alone = with_green(&[&hanging[..], &[[30, 10, 63, 13]]].concat());
        let mut scratch = Scratch::default();
        let planes = Planes::new(&alone, &mut scratch);
        assert_eq!(run_on_ends(&planes, &bands), [0; 4]);
        assert_eq!(corner_fill(&planes, &bands), [Some(1.0); 4]);
        assert!(drawn_corners(&planes, &bands));
    }
}
