//! OpenCV's 8-bit RGB -> HSV conversion (`COLOR_BGR2HSV` on `CV_8U`), reproduced bit for bit.
//!
//! OpenCV computes 8-bit HSV in fixed point with two reciprocal tables (12 fractional bits);
//! H is in [0, 180), S and V in [0, 255]. A float formula disagrees on a few percent of colours,
//! which moves pixels across the seed's `inRange` thresholds.

use std::sync::OnceLock;

const HSV_SHIFT: i32 = 12;

struct Tables {
    sdiv: [i32; 256],
    hdiv180: [i32; 256],
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut sdiv = [0i32; 256];
        let mut hdiv180 = [0i32; 256];
        for i in 1..256 {
            sdiv[i] = ((255 << HSV_SHIFT) as f64 / i as f64).round() as i32;
            hdiv180[i] = ((180 << HSV_SHIFT) as f64 / (6.0 * i as f64)).round() as i32;
        }
        Tables { sdiv, hdiv180 }
    })
}

/// OpenCV 8-bit HSV of one RGB pixel: `(h in 0..180, s, v)`.
#[inline]
pub fn rgb_to_hsv_opencv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let t = tables();
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    let v = r.max(g).max(b);
    let vmin = r.min(g).min(b);
    let diff = v - vmin;
    let s = (diff * t.sdiv[v as usize] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT;
    // OpenCV tests "v == r" before "v == g": a pixel with r == g == max takes the red branch.
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * t.hdiv180[diff as usize] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT;
    if h < 0 {
        h += 180;
    }
    (h as u8, s as u8, v as u8)
}

/// An inclusive HSV box, as `cv2.inRange(hsv, lower, upper)` tests it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HsvRange {
    pub lower: [u8; 3],
    pub upper: [u8; 3],
}

/// The seed's green: `inRange([35, 50, 50], [85, 255, 255])`.
pub const SEED_GREEN: HsvRange = HsvRange {
    lower: [35, 50, 50],
    upper: [85, 255, 255],
};

impl HsvRange {
    #[inline]
    pub fn contains_hsv(&self, (h, s, v): (u8, u8, u8)) -> bool {
        (self.lower[0]..=self.upper[0]).contains(&h)
            && (self.lower[1]..=self.upper[1]).contains(&s)
            && (self.lower[2]..=self.upper[2]).contains(&v)
    }

    /// Whether an RGB pixel falls in this range. For the seed's green range a cheap pre-test
    /// rejects most pixels: a hue of 35..=85 (70..170 degrees) needs green strictly the largest
    /// channel, and V >= 50 needs green >= 50.
    #[inline]
    pub fn contains_rgb(&self, r: u8, g: u8, b: u8) -> bool {
        if self.is_green_only() && !(g > r && g > b && g >= self.lower[2]) {
            return false;
        }
        self.contains_hsv(rgb_to_hsv_opencv(r, g, b))
    }

    /// True when every hue in the range lies where green is the strict maximum channel
    /// (OpenCV hue 31..=89), so the pre-test in [`contains_rgb`](Self::contains_rgb) is exact.
    #[inline]
    fn is_green_only(&self) -> bool {
        self.lower[0] >= 31 && self.upper[0] <= 89
    }
}

/// Binary mask (0 or 1 per pixel) of the pixels of `rgb` inside `range`.
pub fn in_range_mask(rgb: &[u8], range: HsvRange) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| u8::from(range.contains_rgb(p[0], p[1], p[2])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_colours() {
        assert_eq!(rgb_to_hsv_opencv(0, 255, 0), (60, 255, 255));
        assert_eq!(rgb_to_hsv_opencv(255, 0, 0), (0, 255, 255));
        assert_eq!(rgb_to_hsv_opencv(0, 0, 255), (120, 255, 255));
        assert_eq!(rgb_to_hsv_opencv(128, 128, 128), (0, 0, 128));
        assert_eq!(rgb_to_hsv_opencv(0, 0, 0), (0, 0, 0));
    }

    #[test]
    fn pretest_agrees_with_full_conversion() {
        // Every 4th level of every channel: the cheap pre-test must never reject a pixel that
        // the full conversion accepts.
        for r in (0..=255u8).step_by(3) {
            for g in (0..=255u8).step_by(3) {
                for b in (0..=255u8).step_by(3) {
                    let full = SEED_GREEN.contains_hsv(rgb_to_hsv_opencv(r, g, b));
                    assert_eq!(SEED_GREEN.contains_rgb(r, g, b), full, "rgb {r} {g} {b}");
                }
            }
        }
    }
}
