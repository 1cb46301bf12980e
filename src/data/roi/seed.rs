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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_images_follow_opencvs_border_rules() {
        // Erosion ignores pixels beyond the border, so a 1 x 1 green image keeps its pixel and
        // OpenCV reports a 1 x 1 box, as here.
        let one = RgbImage::from_pixel(1, 1, image::Rgb([0, 255, 0]));
        let roi = detect(&one).expect("a box");
        assert_eq!(
            roi.bbox,
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 1,
                y1: 1
            }
        );
        for (w, h) in [(1, 40), (40, 1), (2, 3)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([0, 255, 0]));
            let roi = detect(&img).expect("a box");
            assert_eq!((roi.bbox.width(), roi.bbox.height()), (w, h));
        }
        assert!(detect(&RgbImage::from_pixel(7, 7, image::Rgb([90, 90, 90]))).is_none());
    }

    #[test]
    fn thin_outlines_vanish_as_in_the_seed() {
        // The 5 x 5 opening erases a 2-px outline: the seed's known blind spot.
        let mut img = RgbImage::from_pixel(60, 60, image::Rgb([40, 40, 40]));
        for y in 10..50 {
            for x in 10..50 {
                if !(12..48).contains(&x) || !(12..48).contains(&y) {
                    img.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
        assert!(detect(&img).is_none());
    }
}
