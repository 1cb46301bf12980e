//! Where each token sits: the text model's 3-D MRoPE positions and the vision tower's patch
//! positions, computed on the host and turned into rotary angles.
//!
//! Text: a run of text tokens advances time, height and width together; an image's merged
//! patches all start at the same offset and spread over height and width by their row and
//! column, after which the text continues at that offset plus the larger grid side. The
//! frequencies of a head are interleaved t, h, w, t, h, w, ... (`mrope_section` says how many
//! go to height and width; the rest, and all beyond `3 * section`, are time).

use anyhow::{bail, ensure};
use candle_core::{Device, Result as CResult, Tensor};

/// 3-D positions of a padded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    /// `[axis][row][token]`, axis 0 time, 1 height, 2 width; padding gets 0.
    pub ids: [Vec<Vec<i64>>; 3],
    /// Per row, the position the next generated token takes (largest position + 1).
    pub next: Vec<i64>,
}

/// Positions for `input_ids` (rows of equal length), `valid` marking non-padding tokens and
/// `grids` the `[t, h, w]` patch grid of each image in order of appearance.
pub fn mrope_positions(
    input_ids: &[Vec<u32>],
    valid: &[Vec<bool>],
    image_token_id: u32,
    grids: &[[u32; 3]],
    merge: usize,
) -> anyhow::Result<MropePositions> {
    let rows = input_ids.len();
    let len = input_ids.first().map_or(0, Vec::len);
    let mut ids: [Vec<Vec<i64>>; 3] = std::array::from_fn(|_| vec![vec![0i64; len]; rows]);
    let mut next = Vec::with_capacity(rows);
    let mut grids = grids.iter();
    for (r, row) in input_ids.iter().enumerate() {
        ensure!(
            row.len() == len,
            "rows of a batch must have the same length"
        );
        let kept: Vec<usize> = (0..len).filter(|&i| valid[r][i]).collect();
        let mut cur: i64 = 0;
        let mut max: i64 = -1;
        let mut k = 0;
        while k < kept.len() {
            let is_image = row[kept[k]] == image_token_id;
            let mut end = k;
            while end < kept.len() && (row[kept[end]] == image_token_id) == is_image {
                end += 1;
            }
            if !is_image {
                for (j, &pos) in kept[k..end].iter().enumerate() {
                    for axis in &mut ids {
                        axis[r][pos] = cur + j as i64;
                    }
                }
                cur += (end - k) as i64;
                max = max.max(cur - 1);
            } else {
                let Some(&[t, h, w]) = grids.next() else {
                    bail!("more runs of image tokens in the prompt than images");
                };
                let (t, h, w) = (t as usize, h as usize / merge, w as usize / merge);
                if t * h * w != end - k {
                    bail!(
                        "an image of {t}x{h}x{w} merged patches needs {} image tokens, the prompt has {}",
                        t * h * w,
                        end - k
                    );
                }
                for (j, &pos) in kept[k..end].iter().enumerate() {
                    let (ti, rest) = (j / (h * w), j % (h * w));
                    let p = [ti as i64, (rest / w) as i64, (rest % w) as i64];
                    for axis in 0..3 {
                        ids[axis][r][pos] = cur + p[axis];
                        max = max.max(cur + p[axis]);
                    }
                }
                cur += h.max(w) as i64;
            }
            k = end;
        }
        next.push(max + 1);
    }
    if grids.next().is_some() {
        bail!("more images than runs of image tokens in the prompt");
    }
    Ok(MropePositions { ids, next })
}

/// Which axis (0 t, 1 h, 2 w) each of the `head_dim / 2` frequencies follows.
pub fn mrope_axes(section: [usize; 3], half: usize) -> Vec<usize> {
    (0..half)
        .map(|j| {
            if j % 3 == 1 && j < 3 * section[1] {
                1
            } else if j % 3 == 2 && j < 3 * section[2] {
                2
            } else {
                0
            }
        })
        .collect()
}

/// Inverse frequencies `1 / theta^(2i / dim)` for `i < dim / 2`, in f32 as the reference.
pub fn inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// `(cos, sin)` of shape `(batch, seq, head_dim / 2)` for the text model.
// Indexing: each frequency picks its axis, so three position tables are read at one (r, s).
#[allow(clippy::needless_range_loop)]
pub fn text_rotary(
    positions: &[Vec<Vec<i64>>; 3],
    section: [usize; 3],
    theta: f64,
    head_dim: usize,
    device: &Device,
) -> CResult<(Tensor, Tensor)> {
    let inv = inv_freq(theta, head_dim);
    let axes = mrope_axes(section, head_dim / 2);
    let rows = positions[0].len();
    let len = positions[0].first().map_or(0, Vec::len);
    let mut cos = Vec::with_capacity(rows * len * inv.len());
    let mut sin = Vec::with_capacity(cos.capacity());
    for r in 0..rows {
        for s in 0..len {
            for (&axis, f) in axes.iter().zip(&inv) {
                let angle = positions[axis][r][s] as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let shape = (rows, len, inv.len());
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// (row, column) of every patch of the images, in the processor's merge-block order.
pub fn vision_patch_rows_cols(grids: &[[u32; 3]], merge: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        let (h, w) = (h as usize, w as usize);
        for _ in 0..t {
            for br in 0..h / merge {
                for bc in 0..w / merge {
                    for ir in 0..merge {
                        for ic in 0..merge {
                            out.push((br * merge + ir, bc * merge + ic));
                        }
                    }
                }
            }
        }
    }
    out
}

/// `(cos, sin)` of shape `(patches, head_dim / 2)` for the vision tower: the first half of
/// the frequencies follow the row, the second half the column.
pub fn vision_rotary(
    rows_cols: &[(usize, usize)],
    theta: f64,
    head_dim: usize,
    device: &Device,
) -> CResult<(Tensor, Tensor)> {
    let inv = inv_freq(theta, head_dim / 2);
    let mut cos = Vec::with_capacity(rows_cols.len() * inv.len() * 2);
    let mut sin = Vec::with_capacity(cos.capacity());
    for &(r, c) in rows_cols {
        for coord in [r, c] {
            for f in &inv {
                let angle = coord as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let shape = (rows_cols.len(), inv.len() * 2);
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// Bilinear taps (align corners) into the `side x side` learned position table for each patch:
/// `(indices, weights)`, four per patch, flattened.
pub fn position_taps(grids: &[[u32; 3]], merge: usize, side: usize) -> (Vec<u32>, Vec<f32>) {
    let axis = |index: usize, size: usize| -> [(usize, f32); 2] {
        let src = index as f32 * (side as f32 - 1.0) / (size.max(2) - 1) as f32;
        let floor = src.floor();
        let frac = src - floor;
        let lo = (floor as usize).min(side - 1);
        let hi = (floor as usize + 1).min(side - 1);
        [(lo, 1.0 - frac), (hi, frac)]
    };
    let mut idx = Vec::new();
    let mut wts = Vec::new();
    for &[t, h, w] in grids {
        let cells = vision_patch_rows_cols(&[[t, h, w]], merge);
        for (r, c) in cells {
            let (hs, ws) = (axis(r, h as usize), axis(c, w as usize));
            for (hi, hw) in hs {
                for (wi, ww) in ws {
                    idx.push((hi * side + wi) as u32);
                    wts.push(hw * ww);
                }
            }
        }
    }
    (idx, wts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_positions_spread_over_height_and_width() {
        // text(2) image(2x3 merged) text(2)
        let img = 9;
        let ids = vec![vec![1, 2, img, img, img, img, img, img, 3, 4]];
        let valid = vec![vec![true; 10]];
        let p = mrope_positions(&ids, &valid, img, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(p.ids[0][0], [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(p.ids[1][0], [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(p.ids[2][0], [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(p.next, [7]);
        // Left padding: the pads get 0 and the rest starts at 0.
        let ids = vec![vec![0, 0, 5, 6]];
        let valid = vec![vec![false, false, true, true]];
        let p = mrope_positions(&ids, &valid, img, &[], 2).unwrap();
        assert_eq!(p.ids[1][0], [0, 0, 0, 1]);
        assert_eq!(p.next, [2]);
        // A wrong count of image tokens is an error, not a misplacement.
        let ids = vec![vec![1, img, img, 2]];
        assert!(mrope_positions(&ids, &[vec![true; 4]], img, &[[1, 4, 6]], 2).is_err());
    }

    #[test]
    fn frequencies_interleave() {
        assert_eq!(mrope_axes([2, 3, 3], 8), [0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(mrope_axes([24, 20, 20], 64)[57..], [0, 1, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn taps_hit_the_corners() {
        let (idx, w) = position_taps(&[[1, 2, 2]], 2, 4);
        // Four patches of a 2x2 grid map to the four corners of the 4x4 table.
        let corner = |p: usize| {
            (0..4)
                .filter(|&k| w[p * 4 + k] > 0.5)
                .map(|k| idx[p * 4 + k])
                .collect::<Vec<_>>()
        };
        assert_eq!(corner(0), [0]);
        assert_eq!(corner(1), [3]);
        assert_eq!(corner(2), [12]);
        assert_eq!(corner(3), [15]);
    }
}
