//! Removing drawn ROI outlines from the pixels, so a model trained on the result cannot find the
//! ROI by looking for green.
//!
//! The outline band of each detected box is filled by linear interpolation between the nearest
//! clean pixels across the line (corners, where both directions cross paint, are filled last
//! from their already-filled neighbours). JPEG smears the outline's colour a pixel or two beyond
//! the paint while keeping brightness sharp; in a grey image such tinted pixels get their own
//! luminance back, which restores them almost exactly, and in a colour image they are filled
//! like the paint.

use image::RgbImage;

use super::roi::hsv::SEED_GREEN;
use super::roi::Roi;

/// Excess `g - max(r, b)` from which a pixel near an outline counts as tinted by it.
const TINT_MIN: u8 = 6;
/// How far beyond the painted band tinting is looked for.
const TINT_REACH: u32 = 2;

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

/// Removes the outlines of `rois` (which must carry their line widths, as the robust detector
/// gives them) from `img` in place.
pub fn remove_outlines(img: &mut RgbImage, rois: &[Roi]) -> CleanStats {
    let (w, h) = (img.width(), img.height());
    let mut state = vec![KNOWN; (w * h) as usize];
    let mut stats = CleanStats::default();
    for roi in rois {
        let Some([lt, lr, lb, ll]) = roi.line else {
            continue;
        };
        let b = roi.bbox;
        for y in b.y0..b.y1 {
            for x in b.x0..b.x1 {
                let in_band = x < b.x0 + ll || x >= b.x1 - lr || y < b.y0 + lt || y >= b.y1 - lb;
                if in_band && state[(y * w + x) as usize] == KNOWN {
                    state[(y * w + x) as usize] = HOLE;
                    stats.outline_pixels += 1;
                }
            }
        }
    }
    if stats.outline_pixels == 0 {
        return stats;
    }
    let grey = is_grey_image(img, &state);
    // Pixels next to the paint that carry its tint.
    let mut tinted = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            if state[i] != KNOWN || excess(img, x, y) < TINT_MIN {
                continue;
            }
            if near_hole(&state, w, h, x, y, TINT_REACH) {
                tinted.push(i);
            }
        }
    }
    stats.tinted_pixels = tinted.len();
    if grey {
        for &i in &tinted {
            let p = &mut img.as_mut()[3 * i..3 * i + 3];
            let y = luma(p[0], p[1], p[2]);
            p.copy_from_slice(&[y, y, y]);
        }
    } else {
        for &i in &tinted {
            state[i] = HOLE;
        }
    }
    // Sides first (short gaps across the line), then whatever is left (corners, crossings).
    let max_line = rois
        .iter()
        .filter_map(|r| r.line)
        .flat_map(|l| l.into_iter())
        .max()
        .unwrap_or(1);
    fill_pass(img, &mut state, 2 * (max_line + TINT_REACH) + 2);
    fill_pass(img, &mut state, u32::MAX);
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

fn excess(img: &RgbImage, x: u32, y: u32) -> u8 {
    let p = img.get_pixel(x, y).0;
    p[1].saturating_sub(p[0].max(p[2]))
}

fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((77 * u32::from(r) + 150 * u32::from(g) + 29 * u32::from(b) + 128) >> 8) as u8
}

fn near_hole(state: &[u8], w: u32, h: u32, x: u32, y: u32, reach: u32) -> bool {
    let (x0, x1) = (x.saturating_sub(reach), (x + reach).min(w - 1));
    let (y0, y1) = (y.saturating_sub(reach), (y + reach).min(h - 1));
    (y0..=y1).any(|yy| (x0..=x1).any(|xx| state[(yy * w + xx) as usize] == HOLE))
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

/// Fills every hole pixel whose nearest clean pixels on one axis are at most `max_gap` apart,
/// interpolating linearly between them; pixels filled here count as clean for later passes.
fn fill_pass(img: &mut RgbImage, state: &mut [u8], max_gap: u32) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut filled = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if state[(y * w + x) as usize] != HOLE {
                continue;
            }
            let find = |dx: i64, dy: i64| -> Option<(i64, [u8; 3])> {
                let (mut cx, mut cy, mut d) = (x + dx, y + dy, 1i64);
                while cx >= 0 && cy >= 0 && cx < w && cy < h {
                    if state[(cy * w + cx) as usize] != HOLE {
                        return Some((d, img.get_pixel(cx as u32, cy as u32).0));
                    }
                    cx += dx;
                    cy += dy;
                    d += 1;
                }
                None
            };
            let axis = |a: Option<(i64, [u8; 3])>, b: Option<(i64, [u8; 3])>| match (a, b) {
                (Some((da, pa)), Some((db, pb))) => {
                    let t = da as f32 / (da + db) as f32;
                    let mix = |c: usize| {
                        (f32::from(pa[c]) * (1.0 - t) + f32::from(pb[c]) * t).round() as u8
                    };
                    Some((da + db, [mix(0), mix(1), mix(2)]))
                }
                (Some((d, p)), None) | (None, Some((d, p))) => Some((2 * d + 2, p)),
                (None, None) => None,
            };
            let vertical = axis(find(0, -1), find(0, 1));
            let horizontal = axis(find(-1, 0), find(1, 0));
            let best = match (vertical, horizontal) {
                (Some(v), Some(hz)) if v.0 == hz.0 => {
                    let avg = |c: usize| ((u16::from(v.1[c]) + u16::from(hz.1[c]) + 1) / 2) as u8;
                    Some((v.0, [avg(0), avg(1), avg(2)]))
                }
                (Some(v), Some(hz)) => Some(if v.0 < hz.0 { v } else { hz }),
                (v, hz) => v.or(hz),
            };
            if let Some((gap, colour)) = best {
                if gap as u64 <= u64::from(max_gap) {
                    filled.push(((y * w + x) as usize, colour));
                }
            }
        }
    }
    for (i, colour) in filled {
        img.as_mut()[3 * i..3 * i + 3].copy_from_slice(&colour);
        state[i] = 2;
    }
}
