//! Binary erosion and dilation with a square structuring element, as OpenCV's `morphologyEx`
//! computes them with `np.ones((k, k))`: the window is clipped at the image border (OpenCV's
//! default border value never erodes and never dilates).
//!
//! Masks hold 0 or 1 per pixel, row-major.

/// A binary image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Mask {
        assert_eq!(data.len(), width * height, "mask size");
        Mask {
            width,
            height,
            data,
        }
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x] != 0
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }
}

#[derive(Clone, Copy)]
enum Op {
    Erode,
    Dilate,
}

/// `dst[i] = op(dst[i], src[i])`; on 0/1 masks AND is the minimum and OR the maximum.
#[inline]
fn combine(dst: &mut [u8], src: &[u8], op: Op) {
    match op {
        Op::Erode => dst.iter_mut().zip(src).for_each(|(d, &s)| *d &= s),
        Op::Dilate => dst.iter_mut().zip(src).for_each(|(d, &s)| *d |= s),
    }
}

/// Both passes combine whole rows with shifted copies of rows, so they vectorise. Samples
/// beyond the border are simply not combined: the clipped window OpenCV's default border gives.
fn apply(mask: &Mask, k: usize, op: Op) -> Mask {
    assert!(k % 2 == 1, "kernel size must be odd");
    let r = k / 2;
    let (w, h) = (mask.width, mask.height);
    let mut tmp = mask.data.clone();
    for (src, dst) in mask.data.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        for d in 1..=r.min(w.saturating_sub(1)) {
            combine(&mut dst[..w - d], &src[d..], op);
            combine(&mut dst[d..], &src[..w - d], op);
        }
    }
    let mut out = vec![0u8; w * h];
    for (y, dst) in out.chunks_exact_mut(w).enumerate() {
        let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
        dst.copy_from_slice(&tmp[lo * w..(lo + 1) * w]);
        for yy in lo + 1..=hi {
            combine(dst, &tmp[yy * w..(yy + 1) * w], op);
        }
    }
    Mask::new(w, h, out)
}

pub fn erode(mask: &Mask, k: usize) -> Mask {
    apply(mask, k, Op::Erode)
}

pub fn dilate(mask: &Mask, k: usize) -> Mask {
    apply(mask, k, Op::Dilate)
}

/// `MORPH_OPEN`: erode then dilate (removes specks and lines thinner than `k`).
pub fn open(mask: &Mask, k: usize) -> Mask {
    dilate(&erode(mask, k), k)
}

/// `MORPH_CLOSE`: dilate then erode (fills gaps narrower than `k`).
pub fn close(mask: &Mask, k: usize) -> Mask {
    erode(&dilate(mask, k), k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(mask: &Mask, k: usize, erode: bool) -> Mask {
        let r = (k / 2) as isize;
        let mut out = vec![0u8; mask.data.len()];
        for y in 0..mask.height as isize {
            for x in 0..mask.width as isize {
                let mut all = true;
                let mut any = false;
                for dy in -r..=r {
                    for dx in -r..=r {
                        let (xx, yy) = (x + dx, y + dy);
                        if xx < 0
                            || yy < 0
                            || xx >= mask.width as isize
                            || yy >= mask.height as isize
                        {
                            continue;
                        }
                        let v = mask.get(xx as usize, yy as usize);
                        all &= v;
                        any |= v;
                    }
                }
                out[(y as usize) * mask.width + x as usize] =
                    u8::from(if erode { all } else { any });
            }
        }
        Mask::new(mask.width, mask.height, out)
    }

    #[test]
    fn separable_passes_equal_the_2d_definition() {
        let mut state = 12345u32;
        for &(w, h) in &[(1, 1), (3, 7), (17, 9), (40, 33)] {
            let data = (0..w * h)
                .map(|_| {
                    state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                    u8::from((state >> 28) < 11)
                })
                .collect();
            let m = Mask::new(w, h, data);
            for k in [3, 5] {
                assert_eq!(erode(&m, k), brute(&m, k, true), "erode {w}x{h} k{k}");
                assert_eq!(dilate(&m, k), brute(&m, k, false), "dilate {w}x{h} k{k}");
            }
        }
    }
}
