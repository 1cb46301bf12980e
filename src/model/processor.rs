//! The Qwen-VL image processor: an RGB image in, the vision tower's flattened patches and
//! `image_grid_thw` out, as Hugging Face's `Qwen2VLImageProcessor` (Pillow backend) makes them.
//!
//! Steps: `smart_resize` picks a size whose sides are multiples of `patch_size * merge_size`
//! with a pixel count within `[min_pixels, max_pixels]` and the aspect ratio kept; the image is
//! resized with Pillow's bicubic filter ([`super::resample`]), scaled to [0, 1], normalised with
//! the mean and standard deviation, and cut into `patch_size` squares ordered so that the
//! `merge_size x merge_size` patches that the merger joins are consecutive. A still image is
//! repeated `temporal_patch_size` times along time.

use std::path::Path;

use anyhow::{bail, Context};
use image::RgbImage;
use serde_json::Value;

use super::resample::resize_bicubic;

/// The processor's settings, from a model's `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
}

impl ImageProcessorConfig {
    /// Qwen3-VL's settings (its `preprocessor_config.json`).
    pub fn qwen3_vl() -> Self {
        ImageProcessorConfig {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 65_536,
            max_pixels: 16_777_216,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
        }
    }

    /// Reads `preprocessor_config.json`; `size.shortest_edge`/`size.longest_edge` (or the older
    /// `min_pixels`/`max_pixels`) bound the pixel count. Every number must be there: none is
    /// guessed.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let v = crate::data::files::read_json(path)?;
        Self::from_json(&v).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(v: &Value) -> anyhow::Result<Self> {
        let uint = |key: &str| -> anyhow::Result<u64> {
            v[key]
                .as_u64()
                .with_context(|| format!("missing or non-integer \"{key}\""))
        };
        let triple = |key: &str| -> anyhow::Result<[f32; 3]> {
            let items = v[key]
                .as_array()
                .filter(|a| a.len() == 3)
                .with_context(|| format!("\"{key}\" must be three numbers"))?;
            let mut out = [0f32; 3];
            for (o, i) in out.iter_mut().zip(items) {
                *o = i
                    .as_f64()
                    .with_context(|| format!("\"{key}\" must be three numbers"))?
                    as f32;
            }
            Ok(out)
        };
        let bound = |size_key: &str, old_key: &str| -> anyhow::Result<u64> {
            v["size"][size_key]
                .as_u64()
                .or_else(|| v[old_key].as_u64())
                .with_context(|| format!("missing \"size\".\"{size_key}\" (or \"{old_key}\")"))
        };
        if let Some(r) = v["resample"].as_u64() {
            if r != 3 {
                bail!("resample {r} is not supported (only 3, bicubic)");
            }
        }
        let config = ImageProcessorConfig {
            patch_size: uint("patch_size")? as u32,
            temporal_patch_size: uint("temporal_patch_size")? as u32,
            merge_size: uint("merge_size")? as u32,
            min_pixels: bound("shortest_edge", "min_pixels")?,
            max_pixels: bound("longest_edge", "max_pixels")?,
            image_mean: triple("image_mean")?,
            image_std: triple("image_std")?,
            rescale_factor: v["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0),
        };
        if config.patch_size == 0 || config.merge_size == 0 || config.temporal_patch_size == 0 {
            bail!("patch_size, merge_size and temporal_patch_size must be positive");
        }
        if config.min_pixels > config.max_pixels {
            bail!("min_pixels is larger than max_pixels");
        }
        Ok(config)
    }

    /// The side multiple: one merged patch.
    pub fn factor(&self) -> u32 {
        self.patch_size * self.merge_size
    }

    /// Values per flattened patch: channels x time x patch x patch.
    pub fn patch_dim(&self) -> usize {
        3 * (self.temporal_patch_size * self.patch_size * self.patch_size) as usize
    }
}

/// An image ready for the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// `grid_t * grid_h * grid_w` rows of [`ImageProcessorConfig::patch_dim`] values, row-major.
    pub pixel_values: Vec<f32>,
    /// `[t, h, w]` in patches.
    pub grid_thw: [u32; 3],
    /// The resized image's width and height in pixels.
    pub resized: (u32, u32),
}

impl ProcessedImage {
    /// How many `<|image_pad|>` tokens stand for this image in the prompt (one per merged patch).
    pub fn image_tokens(&self, merge_size: u32) -> usize {
        let [t, h, w] = self.grid_thw;
        (t * h * w / (merge_size * merge_size)) as usize
    }
}

/// The target `(height, width)`: multiples of `factor`, pixel count within the bounds, aspect
/// ratio as close as those allow. Fails for aspect ratios over 200, as the reference does.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> anyhow::Result<(u32, u32)> {
    if height == 0 || width == 0 {
        bail!("image has zero width or height");
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if h.max(w) / h.min(w) > 200.0 {
        bail!(
            "aspect ratio {:.1} is over 200: the image cannot be cut into patches",
            h.max(w) / h.min(w)
        );
    }
    // Python's round() rounds half to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Runs the processor on one RGB image.
pub fn process_image(
    img: &RgbImage,
    config: &ImageProcessorConfig,
) -> anyhow::Result<ProcessedImage> {
    let (height, width) = smart_resize(
        img.height(),
        img.width(),
        config.factor(),
        config.min_pixels,
        config.max_pixels,
    )?;
    let resized = resize_bicubic(img, width, height);
    let p = config.patch_size as usize;
    let m = config.merge_size as usize;
    let t = config.temporal_patch_size as usize;
    let (gh, gw) = (height as usize / p, width as usize / p);
    // Normalised planes, channel first, as the reference computes them (f64 rescale, f32 after).
    let plane = (width * height) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in resized.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            let v = (f64::from(px[c]) * config.rescale_factor) as f32;
            chw[c * plane + i] = (v - config.image_mean[c]) / config.image_std[c];
        }
    }
    // Rows ordered (block row, block col, row in block, col in block); each row holds
    // (channel, time, y in patch, x in patch).
    let dim = config.patch_dim();
    let mut out = Vec::with_capacity(gh * gw * dim);
    for by in 0..gh / m {
        for bx in 0..gw / m {
            for my in 0..m {
                for mx in 0..m {
                    let (py, px) = ((by * m + my) * p, (bx * m + mx) * p);
                    for c in 0..3 {
                        for _ in 0..t {
                            for y in 0..p {
                                let start = c * plane + (py + y) * width as usize + px;
                                out.extend_from_slice(&chw[start..start + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ProcessedImage {
        pixel_values: out,
        grid_thw: [1, gh as u32, gw as u32],
        resized: (width, height),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_keeps_multiples_and_bounds() {
        // Values worked out by hand from the reference formula.
        assert_eq!(
            smart_resize(300, 200, 32, 56 * 56, 1 << 24).unwrap(),
            (288, 192)
        );
        assert_eq!(
            smart_resize(10, 10, 32, 65_536, 1 << 24).unwrap(),
            (256, 256)
        );
        let (h, w) = smart_resize(4000, 3000, 32, 65_536, 1_000_000).unwrap();
        assert!(h % 32 == 0 && w % 32 == 0 && u64::from(h * w) <= 1_000_000);
        assert!(smart_resize(10, 2500, 32, 0, 1 << 24).is_err());
        assert!(smart_resize(0, 5, 32, 0, 1 << 24).is_err());
    }

    #[test]
    fn patches_come_in_merge_order() {
        let config = ImageProcessorConfig {
            patch_size: 2,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 0,
            max_pixels: 1 << 20,
            image_mean: [0.0; 3],
            image_std: [1.0; 3],
            rescale_factor: 1.0,
        };
        // 8 x 4 image (w x h) whose red channel is its x coordinate: no resize (multiples of 4).
        let img = RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let out = process_image(&img, &config).unwrap();
        assert_eq!(out.grid_thw, [1, 2, 4]);
        assert_eq!(out.image_tokens(2), 2);
        let dim = config.patch_dim();
        assert_eq!(dim, 24);
        // Row 1 is the patch right of row 0 (same merge block); row 2 the one below row 0.
        let red = |row: usize| &out.pixel_values[row * dim..row * dim + 4];
        assert_eq!(red(0), [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(red(1), [2.0, 3.0, 2.0, 3.0]);
        assert_eq!(red(2), [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(red(4), [4.0, 5.0, 4.0, 5.0]);
        // Time repeats the frame.
        assert_eq!(out.pixel_values[4..8], out.pixel_values[0..4]);
    }
}
