//! Removing drawn ROI outlines from the pixels, so a model trained on the result cannot find the
//! ROI by looking for green.
//!
//! Each side of a detected outline is a band of painted lines. JPEG smears the paint's colour a
//! pixel or two beyond the band, so each side's *tint margin* is measured too: the lines beside
//! the band that are greener than the lines three pixels further out. Painted and tinted pixels
//! are then filled by edge-directed interpolation: of several directions through the pixel, the
//! one whose two clean end points agree best (penalised by distance) is interpolated, so a
//! structure crossing the line at a slant is continued rather than cut. Corners, where every
//! direction crosses paint, are filled last from their filled neighbours. In a grey image every
//! pixel within a JPEG block of the outline is made grey again (the colour there can only be
//! the paint's), and no filled pixel is left inside the seed's green range.

use image::RgbImage;

use super::roi::hsv::SEED_GREEN;
use super::roi::Roi;

/// How far beyond the painted band JPEG tint is looked for, in pixels.
const MAX_TINT_MARGIN: u32 = 2;
/// How far JPEG carries colour from a line: one 16 x 16 block with 4:2:0 chroma.
const JPEG_BLOCK: u32 = 16;
/// Median green shift (against the line three pixels further out) that marks a tinted line.
const TINT_SHIFT: i32 = 3;

/// What [`remove_outlines`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Pixels of the painted outlines that were filled.
    pub outline_pixels: usize,
    /// Tinted pixels around them that were restored or filled.
    pub tinted_pixels: usize,
}

const KNOWN: u8 = 0;
const HOLE: u8 = 1;
const FILLED: u8 = 2;

/// One side of an outline: lines `lo..=hi` across it, positions `a0..a1` along it.
#[derive(Debug, Clone, Copy)]
struct SideBand {
    horizontal: bool,
    lo: u32,
    hi: u32,
    a0: u32,
    a1: u32,
    /// Which way is outside the box: -1 for top and left, +1 for bottom and right.
    outward: i64,
}

/// Removes the outlines of `rois` (which must carry their line widths, as the robust detector
/// gives them) from `img` in place.
pub fn remove_outlines(img: &mut RgbImage, rois: &[Roi]) -> CleanStats {
    let (w, h) = (img.width(), img.height());
    let mut state = vec![KNOWN; (w * h) as usize];
    let mut sides = Vec::new();
    for roi in rois {
        let Some([lt, lr, lb, ll]) = roi.line else {
            continue;
        };
        let b = roi.bbox;
        // Lines must exist and fit inside the box; anything else is not an outline to remove.
        let fits = lt.min(lr).min(lb).min(ll) > 0
            && b.x1 <= w
            && b.y1 <= h
            && lt + lb <= b.height()
            && ll + lr <= b.width();
        if !fits {
            continue;
        }
        // Horizontal sides run along x, vertical ones along y.
        let band = |horizontal: bool, lo: u32, hi: u32, outward: i64| SideBand {
            horizontal,
            lo,
            hi,
            a0: if horizontal { b.x0 } else { b.y0 },
            a1: if horizontal { b.x1 } else { b.y1 },
            outward,
        };
        sides.extend([
            band(true, b.y0, b.y0 + lt - 1, -1),
            band(true, b.y1 - lb, b.y1 - 1, 1),
            band(false, b.x0, b.x0 + ll - 1, -1),
            band(false, b.x1 - lr, b.x1 - 1, 1),
        ]);
    }
    let mut stats = CleanStats::default();
    for s in &sides {
        for_each_pixel(s, s.lo, s.hi, w, h, |i| {
            if state[i] == KNOWN {
                state[i] = HOLE;
                stats.outline_pixels += 1;
            }
        });
    }
    if stats.outline_pixels == 0 {
        return stats;
    }
    let grey = is_grey_image(img, &state);
    for s in &sides {
        let (out, inside) = tint_margins(img, s, &state);
        // Tinted pixels are filled like the paint: restoring their own luminance (exact in
        // theory for a grey image) keeps JPEG's ringing beside the bright line, and measured
        // worse.
        let mut mark = |from: u32, to: u32| {
            for_each_pixel(s, from, to, w, h, |i| {
                if state[i] == KNOWN {
                    state[i] = HOLE;
                    stats.tinted_pixels += 1;
                }
            })
        };
        let across_max = if s.horizontal { h } else { w } - 1;
        if out > 0 {
            if s.outward < 0 {
                mark(s.lo.saturating_sub(out), s.lo.saturating_sub(1));
            } else if s.hi < across_max {
                mark(s.hi + 1, (s.hi + out).min(across_max));
            }
        }
        if inside > 0 {
            if s.outward < 0 && s.hi < across_max {
                mark(s.hi + 1, (s.hi + inside).min(across_max));
            } else if s.outward > 0 && s.lo > 0 {
                mark(s.lo.saturating_sub(inside), s.lo - 1);
            }
        }
    }
    // Sides first (short gaps across the line), then whatever is left (corners, crossings).
    let widest = sides.iter().map(|s| s.hi - s.lo + 1).max().unwrap_or(1);
    fill_pass(img, &mut state, 2 * (widest + 2 * MAX_TINT_MARGIN) + 2);
    fill_pass(img, &mut state, u32::MAX);
    // In a grey image any colour near the outline is JPEG's chroma bleeding, reaching up to a
    // 16-pixel block away; the true pixels are grey, so their own luminance restores them.
    if grey {
        for s in &sides {
            let ring = SideBand {
                a0: s.a0.saturating_sub(JPEG_BLOCK),
                a1: s.a1 + JPEG_BLOCK,
                ..*s
            };
            let across_max = if s.horizontal { h } else { w } - 1;
            let (from, to) = (
                s.lo.saturating_sub(JPEG_BLOCK),
                (s.hi + JPEG_BLOCK).min(across_max),
            );
            for_each_pixel(&ring, from, to, w, h, |i| {
                let p = &mut img.as_mut()[3 * i..3 * i + 3];
                let y = luma(p[0], p[1], p[2]);
                p.copy_from_slice(&[y, y, y]);
            });
        }
    }
    // Whatever interpolation produced, nothing along the outline may still read as green.
    for (i, s) in state.iter().enumerate() {
        if *s == KNOWN {
            continue;
        }
        let p = &mut img.as_mut()[3 * i..3 * i + 3];
        if grey || SEED_GREEN.contains_rgb(p[0], p[1], p[2]) {
            let y = luma(p[0], p[1], p[2]);
            p.copy_from_slice(&[y, y, y]);
        }
    }
    stats
}

/// Calls `f` with the index of every pixel of lines `from..=to` across side `s`.
fn for_each_pixel(s: &SideBand, from: u32, to: u32, w: u32, h: u32, mut f: impl FnMut(usize)) {
    for c in from..=to {
        for a in s.a0..s.a1 {
            let (x, y) = if s.horizontal { (a, c) } else { (c, a) };
            if x < w && y < h {
                f((y * w + x) as usize);
            }
        }
    }
}

/// How many lines outside and inside the band carry the paint's tint: a line counts while it
/// is, by median along the side, greener than the line three pixels further away.
fn tint_margins(img: &RgbImage, s: &SideBand, state: &[u8]) -> (u32, u32) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let greenness = |along: u32, across: i64| -> Option<i32> {
        let (x, y) = if s.horizontal {
            (i64::from(along), across)
        } else {
            (across, i64::from(along))
        };
        if x < 0 || y < 0 || x >= w || y >= h || state[(y * w + x) as usize] == HOLE {
            return None;
        }
        let p = img.get_pixel(x as u32, y as u32).0;
        Some(i32::from(p[1]) - (i32::from(p[0]) + i32::from(p[2])) / 2)
    };
    // Positions clear of the corners, where the perpendicular sides' tint would mix in.
    let inset = (s.hi - s.lo + 1) + MAX_TINT_MARGIN + 2;
    let (a0, a1) = (s.a0 + inset, s.a1.saturating_sub(inset));
    if a1 <= a0 + 2 {
        return (0, 0);
    }
    let margin = |edge: i64, dir: i64| -> u32 {
        let mut m = 0;
        for d in 1..=MAX_TINT_MARGIN as i64 {
            let mut shifts: Vec<i32> = (a0..a1)
                .filter_map(|a| {
                    Some(greenness(a, edge + dir * d)? - greenness(a, edge + dir * (d + 3))?)
                })
                .collect();
            if shifts.len() < 3 {
                break;
            }
            let mid = shifts.len() / 2;
            if *shifts.select_nth_unstable(mid).1 < TINT_SHIFT {
                break;
            }
            m = d as u32;
        }
        m
    };
    let (outer_edge, inner_edge) = if s.outward < 0 {
        (i64::from(s.lo), i64::from(s.hi))
    } else {
        (i64::from(s.hi), i64::from(s.lo))
    };
    (
        margin(outer_edge, s.outward),
        margin(inner_edge, -s.outward),
    )
}

fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((77 * u32::from(r) + 150 * u32::from(g) + 29 * u32::from(b) + 128) >> 8) as u8
}

/// A grey image (a radiograph, CT, MR) has equal channels almost everywhere away from the paint.
fn is_grey_image(img: &RgbImage, state: &[u8]) -> bool {
    let mut grey = 0usize;
    let mut total = 0usize;
    for (i, p) in img.as_raw().chunks_exact(3).enumerate().step_by(7) {
        if state[i] != KNOWN {
            continue;
        }
        total += 1;
        let spread = p[0].max(p[1]).max(p[2]) - p[0].min(p[1]).min(p[2]);
        if spread <= 8 || p[1].saturating_sub(p[0].max(p[2])) >= 20 {
            grey += 1;
        }
    }
    total > 0 && grey * 100 >= total * 97
}

/// Directions tried for each filled pixel (and their opposites): across and along the axes,
/// the diagonals, and the slopes in between, so a structure crossing a line at a slant (a skull
/// edge, a vessel) is continued along its own direction.
const DIRECTIONS: [(i64, i64); 8] = [
    (1, 0),
    (0, 1),
    (1, 1),
    (1, -1),
    (2, 1),
    (2, -1),
    (1, 2),
    (1, -2),
];
/// Cost, in grey levels of disagreement between the two anchors, of one pixel of distance:
/// high enough that the short way across the line wins unless a slanted structure makes its
/// anchors disagree strongly (chosen on six generated sets, see BENCHMARKS.md).
const DISTANCE_COST: f32 = 10.0;
/// Directions within a few grey levels of cost of the best are blended (weight
/// `exp(-extra_cost / BLEND_COST)`): averaging near-equal candidates lowers the noise that a
/// single pair of anchors carries.
const BLEND_COST: f32 = 8.0;

/// Fills every hole pixel that has clean pixels on both sides within `max_gap` along some
/// direction: each such direction is interpolated linearly, and the directions whose two
/// anchors agree best (penalised by distance) are blended. Pixels filled here count as clean for later passes, and
/// a last pass with an unbounded gap copies the nearest side where only one exists.
fn fill_pass(img: &mut RgbImage, state: &mut [u8], max_gap: u32) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let max_gap_f = max_gap as f32;
    // Per direction: the length of one step, and the most steps within `max_gap`.
    let steps: [(f32, i64); DIRECTIONS.len()] = DIRECTIONS.map(|(dx, dy)| {
        let len = ((dx * dx + dy * dy) as f32).sqrt();
        let most = if max_gap == u32::MAX {
            i64::MAX
        } else {
            (max_gap_f / len).floor() as i64 + 1
        };
        (len, most)
    });
    let pixels = img.as_raw();
    let mut filled = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if state[(y * w + x) as usize] != HOLE {
                continue;
            }
            // The first clean pixel from (x, y) along (dx, dy): its distance and colour.
            let find = |dx: i64, dy: i64, (len, most): (f32, i64)| -> Option<(f32, [u8; 3])> {
                let (mut cx, mut cy) = (x + dx, y + dy);
                let mut n = 1i64;
                while cx >= 0 && cy >= 0 && cx < w && cy < h && n <= most {
                    let i = (cy * w + cx) as usize;
                    if state[i] != HOLE {
                        return Some((
                            n as f32 * len,
                            [pixels[3 * i], pixels[3 * i + 1], pixels[3 * i + 2]],
                        ));
                    }
                    cx += dx;
                    cy += dy;
                    n += 1;
                }
                None
            };
            // (cost, interpolated colour) along each direction with anchors on both sides.
            let mut candidates = [(0f32, [0f32; 3]); DIRECTIONS.len()];
            let mut count = 0;
            let mut one_sided: Option<(f32, [u8; 3])> = None;
            for (k, &(dx, dy)) in DIRECTIONS.iter().enumerate() {
                match (find(dx, dy, steps[k]), find(-dx, -dy, steps[k])) {
                    (Some((da, pa)), Some((db, pb))) => {
                        if da + db > max_gap_f {
                            continue;
                        }
                        let disagreement = (0..3)
                            .map(|c| f32::from(pa[c].abs_diff(pb[c])))
                            .sum::<f32>()
                            / 3.0;
                        let t = da / (da + db);
                        let colour =
                            [0, 1, 2].map(|c| f32::from(pa[c]) * (1.0 - t) + f32::from(pb[c]) * t);
                        candidates[count] = (disagreement + DISTANCE_COST * (da + db), colour);
                        count += 1;
                    }
                    (Some((d, p)), None) | (None, Some((d, p))) => {
                        if one_sided.is_none_or(|(b, _)| d < b) {
                            one_sided = Some((d, p));
                        }
                    }
                    (None, None) => {}
                }
            }
            let candidates = &candidates[..count];
            let best_cost = candidates.iter().map(|c| c.0).fold(f32::INFINITY, f32::min);
            let blended = (!candidates.is_empty()).then(|| {
                let (mut sum, mut weights) = ([0f32; 3], 0f32);
                for (cost, colour) in candidates {
                    let weight = (-(cost - best_cost) / BLEND_COST).exp();
                    for (s, v) in sum.iter_mut().zip(colour) {
                        *s += weight * v;
                    }
                    weights += weight;
                }
                sum.map(|s| (s / weights).round() as u8)
            });
            let unbounded = max_gap == u32::MAX;
            let one_sided = one_sided.filter(|_| unbounded).map(|(_, p)| p);
            if let Some(colour) = blended.or(one_sided) {
                filled.push(((y * w + x) as usize, colour));
            }
        }
    }
    for (i, colour) in filled {
        img.as_mut()[3 * i..3 * i + 3].copy_from_slice(&colour);
        state[i] = FILLED;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image_io::{decode_rgb8, LoadOptions};
    use crate::data::roi::{detect, DetectMode};

    /// A textured grey picture with a green outline painted in, through a real JPEG round trip.
    fn painted_jpeg(w: u32, h: u32, rect: [u32; 4], line: u32) -> (RgbImage, RgbImage) {
        let clean = RgbImage::from_fn(w, h, |x, y| {
            let v = (90.0 + 40.0 * ((x as f32) / 9.0).sin() + 0.3 * y as f32) as u8;
            image::Rgb([v, v, v])
        });
        let mut painted = clean.clone();
        let [x0, y0, x1, y1] = rect;
        for y in y0..y1 {
            for x in x0..x1 {
                if x < x0 + line || x >= x1 - line || y < y0 + line || y >= y1 - line {
                    painted.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&painted)
            .unwrap();
        (decode_rgb8(&jpeg, LoadOptions::default()).unwrap(), clean)
    }

    #[test]
    fn outline_touching_the_border_is_removed_completely() {
        let rect = [30, 0, 110, 60];
        let (mut img, clean) = painted_jpeg(160, 120, rect, 1);
        let rois = detect(&img, DetectMode::Robust).rois;
        assert_eq!(rois.len(), 1);
        assert_eq!(rois[0].bbox.y0, 0, "{:?}", rois[0].bbox);
        let stats = remove_outlines(&mut img, &rois);
        assert!(stats.outline_pixels >= 2 * (80 + 60) - 4);
        let [x0, y0, x1, y1] = rect;
        let mut error = 0u64;
        let mut n = 0u64;
        for y in y0..y1 {
            for x in x0..x1 {
                if x == x0 || x == x1 - 1 || y == y0 || y == y1 - 1 {
                    let p = img.get_pixel(x, y).0;
                    assert!(
                        !SEED_GREEN.contains_rgb(p[0], p[1], p[2]),
                        "green at ({x}, {y})"
                    );
                    let c = clean.get_pixel(x, y).0;
                    error += (0..3).map(|i| u64::from(p[i].abs_diff(c[i]))).sum::<u64>();
                    n += 3;
                }
            }
        }
        let mean = error as f64 / n as f64;
        assert!(mean <= 8.0, "mean error {mean:.2} on the outline");
    }

    #[test]
    fn a_grey_image_stays_grey() {
        let (mut img, _) = painted_jpeg(200, 150, [40, 30, 150, 120], 3);
        let rois = detect(&img, DetectMode::Robust).rois;
        assert_eq!(rois.len(), 1);
        remove_outlines(&mut img, &rois);
        let b = rois[0].bbox;
        for y in b.y0..b.y1 {
            for x in b.x0..b.x1 {
                let p = img.get_pixel(x, y).0;
                let spread = p.iter().max().unwrap() - p.iter().min().unwrap();
                assert!(spread <= 12, "colour left at ({x}, {y}): {p:?}");
            }
        }
    }

    #[test]
    fn boxes_whose_lines_do_not_fit_are_left_alone() {
        let (img, _) = painted_jpeg(64, 64, [10, 10, 50, 50], 1);
        let bbox = crate::data::roi::PixelBox {
            x0: 10,
            y0: 10,
            x1: 50,
            y1: 50,
        };
        for line in [[0, 1, 1, 1], [30, 1, 30, 1], [1, 1, 1, 41]] {
            let mut copy = img.clone();
            let roi = Roi {
                bbox,
                confidence: None,
                line: Some(line),
            };
            assert_eq!(remove_outlines(&mut copy, &[roi]), CleanStats::default());
            assert_eq!(copy, img);
        }
        let outside = crate::data::roi::PixelBox {
            x0: 40,
            y0: 40,
            x1: 90,
            y1: 90,
        };
        let roi = Roi {
            bbox: outside,
            confidence: None,
            line: Some([1, 1, 1, 1]),
        };
        let mut copy = img.clone();
        assert_eq!(remove_outlines(&mut copy, &[roi]), CleanStats::default());
    }

    #[test]
    fn nothing_to_remove_changes_nothing() {
        let (img, _) = painted_jpeg(64, 64, [10, 10, 50, 50], 1);
        let mut copy = img.clone();
        let stats = remove_outlines(&mut copy, &[]);
        assert_eq!(stats, CleanStats::default());
        assert_eq!(copy, img);
    }
}
