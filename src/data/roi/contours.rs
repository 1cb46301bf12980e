//! Outer contours of 8-connected components, as OpenCV's `findContours(RETR_EXTERNAL)` sees them,
//! with the polygon area that `contourArea` reports.
//!
//! The outer border of each component is followed with Suzuki and Abe's border-following rule
//! (the one OpenCV implements); its area is the shoelace area of the polygon through the border
//! pixels' centres. Components lying inside another component's hole are reported too: their
//! area is always smaller than the enclosing one's, so "largest contour" is unaffected.

use super::morphology::Mask;

/// One component's outer border.
#[derive(Debug, Clone, PartialEq)]
pub struct Contour {
    /// First pixel of the component in raster order (where the border following starts).
    pub start: (usize, usize),
    /// `cv2.contourArea` of the outer border polygon.
    pub area: f64,
    /// `cv2.boundingRect`: x, y, width, height in pixels.
    pub bbox: [usize; 4],
    /// Number of pixels in the component.
    pub pixels: usize,
}

/// Neighbour offsets in OpenCV's chain-code order: east, then counter-clockwise on screen.
const DIRS: [(isize, isize); 8] = [
    (1, 0),
    (1, -1),
    (0, -1),
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
];

/// Outer contours of all 8-connected components of `mask`, in raster order of their first pixel.
pub fn outer_contours(mask: &Mask) -> Vec<Contour> {
    let (w, h) = (mask.width, mask.height);
    let mut labelled = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for y in 0..h {
        let row = y * w;
        for x in 0..w {
            if mask.data[row + x] == 0 || labelled[row + x] {
                continue;
            }
            let border = follow_outer_border(mask, x, y);
            let (bbox, pixels) = flood_fill(mask, &mut labelled, &mut stack, x, y);
            out.push(Contour {
                start: (x, y),
                area: shoelace(&border),
                bbox,
                pixels,
            });
        }
    }
    out
}

#[inline]
fn set_at(mask: &Mask, x: isize, y: isize) -> bool {
    x >= 0
        && y >= 0
        && (x as usize) < mask.width
        && (y as usize) < mask.height
        && mask.data[y as usize * mask.width + x as usize] != 0
}

/// Border pixels of the component whose first raster pixel is (x0, y0), in following order.
fn follow_outer_border(mask: &Mask, x0: usize, y0: usize) -> Vec<(isize, isize)> {
    let p0 = (x0 as isize, y0 as isize);
    let step = |p: (isize, isize), d: usize| (p.0 + DIRS[d].0, p.1 + DIRS[d].1);
    // The west neighbour of a first raster pixel is background. Look clockwise from it for the
    // first set neighbour; none means an isolated pixel.
    let mut first = None;
    let mut s = 4;
    for _ in 0..8 {
        s = (s + 7) % 8;
        let n = step(p0, s);
        if set_at(mask, n.0, n.1) {
            first = Some((s, n));
            break;
        }
    }
    let Some((s1, p1)) = first else {
        return vec![p0];
    };
    let mut border = Vec::new();
    let mut cur = p0;
    let mut back = s1; // direction from `cur` to the previous border pixel
    loop {
        let mut d = back;
        let next = loop {
            d = (d + 1) % 8;
            let n = step(cur, d);
            if set_at(mask, n.0, n.1) {
                break n;
            }
        };
        border.push(cur);
        if next == p0 && cur == p1 {
            break;
        }
        cur = next;
        back = (d + 4) % 8;
    }
    border
}

fn shoelace(points: &[(isize, isize)]) -> f64 {
    if points.len() < 3 {
        return 0.0;
    }
    let mut twice = 0i64;
    for i in 0..points.len() {
        let (x0, y0) = points[i];
        let (x1, y1) = points[(i + 1) % points.len()];
        twice += (x0 * y1 - x1 * y0) as i64;
    }
    twice.abs() as f64 / 2.0
}

/// Labels the 8-connected component at (x, y); returns its bounding box and pixel count.
fn flood_fill(
    mask: &Mask,
    labelled: &mut [bool],
    stack: &mut Vec<(usize, usize)>,
    x: usize,
    y: usize,
) -> ([usize; 4], usize) {
    let (w, h) = (mask.width, mask.height);
    let (mut x0, mut y0, mut x1, mut y1) = (x, y, x, y);
    let mut pixels = 0;
    labelled[y * w + x] = true;
    stack.push((x, y));
    while let Some((cx, cy)) = stack.pop() {
        pixels += 1;
        x0 = x0.min(cx);
        x1 = x1.max(cx);
        y0 = y0.min(cy);
        y1 = y1.max(cy);
        for ny in cy.saturating_sub(1)..=(cy + 1).min(h - 1) {
            for nx in cx.saturating_sub(1)..=(cx + 1).min(w - 1) {
                let i = ny * w + nx;
                if mask.data[i] != 0 && !labelled[i] {
                    labelled[i] = true;
                    stack.push((nx, ny));
                }
            }
        }
    }
    ([x0, y0, x1 - x0 + 1, y1 - y0 + 1], pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_from(rows: &[&str]) -> Mask {
        let w = rows[0].len();
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        Mask::new(w, rows.len(), data)
    }

    #[test]
    fn filled_square_area_is_through_pixel_centres() {
        let m = mask_from(&["....", ".###", ".###", ".###"]);
        let c = outer_contours(&m);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].area, 4.0);
        assert_eq!(c[0].bbox, [1, 1, 3, 3]);
    }

    #[test]
    fn lines_and_points_have_zero_area() {
        let m = mask_from(&["#....", ".....", ".####", "....."]);
        let c = outer_contours(&m);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].area, 0.0);
        assert_eq!(c[1].area, 0.0);
        assert_eq!(c[1].bbox, [1, 2, 4, 1]);
    }

    #[test]
    fn hollow_rectangle_encloses_its_hole() {
        let m = mask_from(&["#####", "#...#", "#...#", "#####"]);
        let c = outer_contours(&m);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].area, 12.0);
    }

    #[test]
    fn diagonal_touch_is_one_component() {
        let m = mask_from(&["##..", "##..", "..##", "..##"]);
        let c = outer_contours(&m);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].bbox, [0, 0, 4, 4]);
        assert_eq!(c[0].area, 2.0);
    }
}
