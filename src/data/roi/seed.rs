//! The original pipeline's ROI extraction, reproduced exactly:
//! BGR->HSV (OpenCV 8-bit), `inRange([35,50,50], [85,255,255])`, 5x5 open, 5x5 close,
//! external contours, the largest by `contourArea`, its `boundingRect`.
//!
//! Known weaknesses kept on purpose: the 5x5 opening erases outlines thinner than 5 px, and a
//! small green mark wins once the box is gone. Use [`super::robust`] for real work.

use image::RgbImage;

use super::contours::outer_contours;
use super::hsv::{in_range_mask, SEED_GREEN};
use super::morphology::{close, open, Mask};
use super::{PixelBox, Roi};

/// The seed's answer: the bounding rectangle of the largest green contour, if any.
pub fn detect(img: &RgbImage) -> Option<Roi> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mask = Mask::new(w, h, in_range_mask(img.as_raw(), SEED_GREEN));
    let mask = close(&open(&mask, 5), 5);
    let contours = outer_contours(&mask);
    // OpenCV lists external contours last-found first, and Python's `max` keeps the first of
    // equal keys: among equal areas the seed picks the component that starts last in raster order.
    let best =
        contours
            .iter()
            .rev()
            .fold(None::<&super::contours::Contour>, |best, c| match best {
                Some(b) if b.area >= c.area => Some(b),
                _ => Some(c),
            })?;
    let [x, y, bw, bh] = best.bbox.map(|v| v as u32);
    Some(Roi {
        bbox: PixelBox {
            x0: x,
            y0: y,
            x1: x + bw,
            y1: y + bh,
        },
        confidence: None,
        line: None,
    })
}
