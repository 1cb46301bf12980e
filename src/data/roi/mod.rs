//! Finding the ROI rectangle that MedTrinity-style data draws into the pixels in green.
//!
//! Two detectors share one result type:
//! - [`seed`] reproduces the original pipeline's OpenCV procedure exactly, for comparison;
//! - [`robust`] (the default) finds rectangle outlines of any line width, several per image,
//!   survives JPEG chroma bleeding, ignores green marks that are not rectangles, and reports
//!   nothing rather than a guess.

pub mod contours;
pub mod hsv;
pub mod morphology;
pub mod robust;
pub mod seed;

use image::RgbImage;
use serde::Serialize;

/// Which detector to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectMode {
    /// Rectangle outlines of any line width, several per image, none rather than a guess.
    #[default]
    Robust,
    /// The original pipeline's OpenCV procedure, reproduced pixel for pixel.
    Seed,
}

/// A detected box in pixels: the outer edge of the drawn outline, `x1`/`y1` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBox {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl PixelBox {
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
    pub fn area(&self) -> u64 {
        u64::from(self.width()) * u64::from(self.height())
    }
    /// Normalised `[x1, y1, x2, y2]` in [0, 1], as the seed's `roi_coords`.
    pub fn normalised(&self, width: u32, height: u32) -> [f64; 4] {
        let (w, h) = (f64::from(width), f64::from(height));
        [
            f64::from(self.x0) / w,
            f64::from(self.y0) / h,
            f64::from(self.x1) / w,
            f64::from(self.y1) / h,
        ]
    }
    pub fn iou(&self, other: &PixelBox) -> f64 {
        let ix = self.x1.min(other.x1).saturating_sub(self.x0.max(other.x0));
        let iy = self.y1.min(other.y1).saturating_sub(self.y0.max(other.y0));
        let inter = u64::from(ix) * u64::from(iy);
        let union = self.area() + other.area() - inter;
        if union == 0 {
            0.0
        } else {
            inter as f64 / union as f64
        }
    }
}

/// One detected ROI.
#[derive(Debug, Clone, PartialEq)]
pub struct Roi {
    pub bbox: PixelBox,
    /// How sure the detector is, in [0, 1]; `None` for the seed procedure, which has no measure.
    pub confidence: Option<f32>,
    /// Line width of the outline per side (top, right, bottom, left) in pixels, where known.
    pub line: Option<[u32; 4]>,
}

/// Everything found in one image, largest box first.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub width: u32,
    pub height: u32,
    pub rois: Vec<Roi>,
}

impl Detection {
    /// The primary ROI: the largest box.
    pub fn primary(&self) -> Option<&Roi> {
        self.rois.first()
    }
}

/// Runs the chosen detector on an RGB image.
pub fn detect(img: &RgbImage, mode: DetectMode) -> Detection {
    let rois = match mode {
        DetectMode::Seed => seed::detect(img).into_iter().collect(),
        DetectMode::Robust => robust::detect(img),
    };
    Detection {
        width: img.width(),
        height: img.height(),
        rois,
    }
}
