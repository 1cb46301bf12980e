//! Bicubic resizing that gives the same 8-bit pixels as Pillow's `Image.resize(..., BICUBIC)`.
//!
//! The Qwen-VL image processor resizes with Pillow before normalising, so the model was trained
//! on Pillow's pixels; a different resampler (the `image` crate's Catmull-Rom, for instance)
//! shifts every input value a little. Pillow's method, re-derived here: a separable convolution,
//! one axis then the other, each with the cubic kernel (a = -0.5) stretched by the scale factor
//! when shrinking (so it also anti-aliases), weights normalised per output pixel and converted
//! to fixed point with 22 fractional bits, and each pass rounded and clipped to 8 bits. Because
//! of that rounding the order of the passes matters: this is horizontal first, as Pillow up to
//! 12.x always does. Pillow 13 runs the vertical pass first in some cases (no rule found by
//! probing); its pixels then differ from these by one level here and there. The fixtures are
//! made with Pillow 12 (`tests/fixtures/make_processor_fixtures.py`).

use image::RgbImage;

/// Fractional bits of the fixed-point weights (32 - 8 - 2, as in Pillow).
const PRECISION_BITS: u32 = 22;
/// The cubic kernel's free parameter.
const A: f64 = -0.5;
/// Half-width of the cubic kernel at scale 1.
const SUPPORT: f64 = 2.0;

fn cubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output position along one axis: the first input index and the fixed-point weights.
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let weights: Vec<f64> = (first..last)
                .map(|x| cubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    // Round half away from zero, as Pillow does.
                    if scaled < 0.0 {
                        (scaled - 0.5).trunc() as i32
                    } else {
                        (scaled + 0.5).trunc() as i32
                    }
                })
                .collect();
            (first, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an RGB image to `width` x `height` with Pillow's bicubic filter.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    vertical(&horizontal(img, width), height)
}

/// Resamples along x (nothing to do when the width stays).
fn horizontal(img: &RgbImage, width: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if width == w0 {
        return img.clone();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(w0, width);
    let src = img.as_raw();
    let mut out = vec![0u8; (width * h0 * 3) as usize];
    for y in 0..h0 as usize {
        let row = &src[y * w0 as usize * 3..(y + 1) * w0 as usize * 3];
        for (x, (first, k)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let mut acc = half;
                for (j, &kj) in k.iter().enumerate() {
                    acc += i64::from(row[(first + j) * 3 + c]) * i64::from(kj);
                }
                out[(y * width as usize + x) * 3 + c] = clip8(acc);
            }
        }
    }
    RgbImage::from_raw(width, h0, out).expect("sized buffer")
}

/// Resamples along y (nothing to do when the height stays).
fn vertical(img: &RgbImage, height: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if height == h0 {
        return img.clone();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(h0, height);
    let src = img.as_raw();
    let stride = w0 as usize * 3;
    let mut out = vec![0u8; stride * height as usize];
    for (y, (first, k)) in coeffs.iter().enumerate() {
        for i in 0..stride {
            let mut acc = half;
            for (j, &kj) in k.iter().enumerate() {
                acc += i64::from(src[(first + j) * stride + i]) * i64::from(kj);
            }
            out[y * stride + i] = clip8(acc);
        }
    }
    RgbImage::from_raw(w0, height, out).expect("sized buffer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(100, 37), (37, 100), (512, 512), (3, 64)] {
            for (_, k) in coefficients(i, o) {
                let sum: i64 = k.iter().map(|&v| i64::from(v)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_same_size_is_identity() {
        let img = RgbImage::from_pixel(31, 17, image::Rgb([10, 128, 250]));
        let r = resize_bicubic(&img, 64, 48);
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
        let g = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, 7]));
        assert_eq!(resize_bicubic(&g, 9, 7), g);
    }
}
