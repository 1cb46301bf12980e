//! The pixels the detector looks at: one plane of green flags (for horizontal and for vertical
//! lines) computed from `g - r` and `g - b`, row by row in one vectorised pass, in buffers reused
//! from image to image.

use image::RgbImage;

use super::super::PixelBox;

/// Smallest green excess `g - max(r, b)` that marks a pixel as possibly painted.
const GREEN_MIN: u8 = 20;

/// Shift towards green, against the pixels two steps away across a line, that marks a thin line
/// over colour (see `green_masks`).
const SHIFT_MIN: i32 = 25;

/// Flag bit in [`Planes::green`]: green as part of a horizontal line.
pub(super) const GREEN_H: u8 = 1;
/// Flag bit in [`Planes::green`]: green as part of a vertical line.
pub(super) const GREEN_V: u8 = 2;

/// Colour differences are kept for this many rows only: the row being judged and two on
/// either side.
const RING_ROWS: usize = 5;

pub(super) struct Planes<'a> {
    pub(super) width: u32,
    pub(super) height: u32,
    rgb: &'a [u8],
    /// Per pixel, [`GREEN_H`] where it is green as part of a horizontal line and [`GREEN_V`]
    /// as part of a vertical one (see `green_masks`).
    pub(super) green: Vec<u8>,
    /// Per row, whether any of its pixels has a flag in `green`.
    pub(super) row_has_green: Vec<bool>,
    /// Number of pixels with [`GREEN_H`].
    pub(super) green_h_count: u32,
}

/// Buffers kept from image to image on one thread: allocating them afresh for every image
/// costs more in page faults than filling them does.
#[derive(Default)]
pub(super) struct Scratch {
    /// `g - r` and `g - b` of the last [`RING_ROWS`] rows.
    ring: Vec<i16>,
    green: Vec<u8>,
    row_has_green: Vec<bool>,
}

thread_local! {
    pub(super) static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `v` with exactly `n` elements, reusing its allocation; old contents are left in place, for
/// callers that overwrite every element.
fn sized<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.resize(n, T::default());
    v
}

impl<'a> Planes<'a> {
    /// The masks of `img`, built in buffers taken from `scratch` (give them back with
    /// [`Planes::recycle`]).
    pub(super) fn new(img: &'a RgbImage, scratch: &mut Scratch) -> Planes<'a> {
        let mut green = std::mem::take(&mut scratch.green);
        let mut row_has_green = std::mem::take(&mut scratch.row_has_green);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let green_h_count = green_masks(
            img,
            MaskBuffers {
                ring: sized(&mut scratch.ring, 2 * RING_ROWS * w),
                green: sized(&mut green, w * h),
                rows: sized(&mut row_has_green, h),
            },
        );
        Planes {
            width: img.width(),
            height: img.height(),
            rgb: img.as_raw(),
            green,
            row_has_green,
            green_h_count,
        }
    }

    pub(super) fn recycle(self, scratch: &mut Scratch) {
        scratch.green = self.green;
        scratch.row_has_green = self.row_has_green;
    }

    /// Number of green pixels in `b` (either flag).
    pub(super) fn green_count(&self, b: &PixelBox) -> u32 {
        let w = self.width as usize;
        let (x0, x1) = (b.x0.min(self.width) as usize, b.x1.min(self.width) as usize);
        let (y0, y1) = (
            b.y0.min(self.height) as usize,
            b.y1.min(self.height) as usize,
        );
        let mut n = 0u32;
        for y in (y0..y1).filter(|&y| self.row_has_green[y]) {
            let row = &self.green[y * w + x0..y * w + x1.max(x0)];
            n += row.iter().map(|&g| u32::from(g != 0)).sum::<u32>();
        }
        n
    }

    /// Green as part of a horizontal (`true`) or vertical line.
    #[inline]
    pub(super) fn green_in(&self, horizontal: bool, x: u32, y: u32) -> bool {
        let flag = if horizontal { GREEN_H } else { GREEN_V };
        self.green[(y * self.width + x) as usize] & flag != 0
    }

    /// Signed green excess `g - max(r, b)`.
    #[inline]
    pub(super) fn excess(&self, x: u32, y: u32) -> i32 {
        let i = 3 * (y * self.width + x) as usize;
        i32::from(self.rgb[i + 1]) - i32::from(self.rgb[i].max(self.rgb[i + 2]))
    }

    #[inline]
    pub(super) fn luma(&self, x: u32, y: u32) -> i32 {
        let i = 3 * (y * self.width + x) as usize;
        let (r, g, b) = (
            i32::from(self.rgb[i]),
            i32::from(self.rgb[i + 1]),
            i32::from(self.rgb[i + 2]),
        );
        (77 * r + 150 * g + 29 * b) >> 8
    }
}

/// The green flags of every pixel, 1 for green: a clear excess `g - max(r, b)`, or a pixel
/// shifted towards green by `SHIFT_MIN` against the pixels two steps away across a line, above
/// and below ([`GREEN_H`], for horizontal lines) or left and right ([`GREEN_V`], for vertical
/// lines). The shift finds a thin line whose colour JPEG has mixed with a red or orange
/// background; a white or grey line over colour shifts away from green and is not taken.
/// Also marks the rows with any flag; returns the number of pixels with [`GREEN_H`].
fn green_masks(img: &RgbImage, out: MaskBuffers) -> u32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { green_masks_avx2(img.as_raw(), w, h, out) };
    }
    masks_by_rows(img.as_raw(), (w, h), out, colour_differences)
}

/// Where [`green_masks`] works and writes: the ring of colour differences (`2 * RING_ROWS`
/// rows), the flags of every pixel, and per row whether it has any.
struct MaskBuffers<'b> {
    ring: &'b mut [i16],
    green: &'b mut [u8],
    rows: &'b mut [bool],
}

/// [`green_masks`] compiled for AVX2, with a shuffle-based RGB de-interleave; the mask loops
/// vectorise several times wider than with the baseline SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn green_masks_avx2(rgb: &[u8], w: usize, h: usize, out: MaskBuffers) -> u32 {
    // SAFETY: this function only runs where AVX2 is available.
    let differences = |rgb: &[u8], g_r: &mut [i16], g_b: &mut [i16]| unsafe {
        colour_differences_avx2(rgb, g_r, g_b)
    };
    masks_by_rows(rgb, (w, h), out, differences)
}

/// The flags row by row: the colour differences of row `y + 2` go into the ring of the last
/// five rows, then row `y` is judged against rows `y - 2` and `y + 2`, while all three are
/// still in cache. A row whose ranges of differences rule out every flag (a grey row, most
/// rows of most medical images) is cleared without looking at its pixels.
#[inline(always)]
fn masks_by_rows(
    rgb: &[u8],
    (w, h): (usize, usize),
    MaskBuffers { ring, green, rows }: MaskBuffers,
    differences: impl Fn(&[u8], &mut [i16], &mut [i16]) -> Ranges,
) -> u32 {
    assert!(rgb.len() == 3 * w * h && green.len() == w * h && rows.len() == h);
    assert!(ring.len() == 2 * RING_ROWS * w);
    let mut ranges = [Ranges::EMPTY; RING_ROWS];
    let fill = |ring: &mut [i16], ranges: &mut [Ranges; RING_ROWS], y: usize| {
        let slot = &mut ring[2 * (y % RING_ROWS) * w..2 * (y % RING_ROWS + 1) * w];
        let (g_r, g_b) = slot.split_at_mut(w);
        ranges[y % RING_ROWS] = differences(&rgb[3 * y * w..3 * (y + 1) * w], g_r, g_b);
    };
    for y in 0..h.min(2) {
        fill(ring, &mut ranges, y);
    }
    let mut count = 0u32;
    for y in 0..h {
        if y + 2 < h {
            fill(ring, &mut ranges, y + 2);
        }
        let out = &mut green[y * w..(y + 1) * w];
        let has_rows = y >= 2 && y + 2 < h;
        let range = |y: usize| &ranges[y % RING_ROWS];
        let (up, down) = if has_rows {
            (range(y - 2), range(y + 2))
        } else {
            (range(y), range(y))
        };
        if !range(y).may_flag(up, down, has_rows, w > 4) {
            out.fill(0);
            rows[y] = false;
            continue;
        }
        let slot = |y: usize| {
            let k = 2 * (y % RING_ROWS) * w;
            (&ring[k..k + w], &ring[k + w..k + 2 * w])
        };
        let centre = slot(y);
        // Rows two above and below; at the top and bottom edges the row itself stands in,
        // which makes the shift across rows zero, so it is not taken.
        let (up, down) = if has_rows {
            (slot(y - 2), slot(y + 2))
        } else {
            (centre, centre)
        };
        mask_row(centre, up, down, out);
        let any = out.iter().fold(0u8, |a, &g| a | g);
        rows[y] = any != 0;
        if any & GREEN_H != 0 {
            count += out.iter().map(|&g| u32::from(g & GREEN_H)).sum::<u32>();
        }
    }
    count
}

/// Smallest and largest `g - r` and `g - b` on one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ranges {
    min_r: i16,
    max_r: i16,
    min_b: i16,
    max_b: i16,
}

impl Ranges {
    /// The ranges of no pixels at all.
    const EMPTY: Ranges = Ranges {
        min_r: i16::MAX,
        max_r: i16::MIN,
        min_b: i16::MAX,
        max_b: i16::MIN,
    };

    fn add(&mut self, g_r: i16, g_b: i16) {
        self.min_r = self.min_r.min(g_r);
        self.max_r = self.max_r.max(g_r);
        self.min_b = self.min_b.min(g_b);
        self.max_b = self.max_b.max(g_b);
    }

    fn merge(&mut self, other: &Ranges) {
        self.min_r = self.min_r.min(other.min_r);
        self.max_r = self.max_r.max(other.max_r);
        self.min_b = self.min_b.min(other.min_b);
        self.max_b = self.max_b.max(other.max_b);
    }

    /// Whether a pixel of this row can get a flag (see `mask_row`), given the ranges of the
    /// rows two above and below (`has_rows`: they exist) and whether the row has pixels two
    /// steps away along it (`has_cols`). Each test holds for every pixel that passes it
    /// itself, so a row that fails all of them has no flag.
    fn may_flag(&self, up: &Ranges, down: &Ranges, has_rows: bool, has_cols: bool) -> bool {
        let (clear, ridge) = (i32::from(GREEN_MIN), 2 * SHIFT_MIN);
        let (max_r, max_b) = (i32::from(self.max_r), i32::from(self.max_b));
        let clear_possible = max_r >= clear && max_b >= clear;
        let across_rows = has_rows
            && 2 * max_r - i32::from(up.min_r) - i32::from(down.min_r) >= ridge
            && 2 * max_b - i32::from(up.min_b) - i32::from(down.min_b) >= ridge;
        let along_row = has_cols
            && 2 * (max_r - i32::from(self.min_r)) >= ridge
            && 2 * (max_b - i32::from(self.min_b)) >= ridge;
        clear_possible || across_rows || along_row
    }
}

/// One row of flags (see [`green_masks`]): `(g - r, g - b)` on the row, on the row two above
/// and on the row two below.
#[inline(always)]
fn mask_row(
    (gr, gb): (&[i16], &[i16]),
    (gr_u, gb_u): (&[i16], &[i16]),
    (gr_d, gb_d): (&[i16], &[i16]),
    out: &mut [u8],
) {
    let n = gr.len();
    // Equal lengths, asserted once, let the compiler drop every bounds check and vectorise.
    assert!(gb.len() == n && out.len() == n);
    assert!([gr_u, gb_u, gr_d, gb_d].iter().all(|s| s.len() == n));
    let clear_min = i16::from(GREEN_MIN);
    let ridge_min = 2 * SHIFT_MIN as i16;
    let flags = |c_r: i16, c_b: i16, u_r: i16, u_b: i16, d_r: i16, d_b: i16, across: bool| {
        let clear = (c_r >= clear_min) & (c_b >= clear_min);
        let ridge = (2 * c_r - u_r - d_r >= ridge_min) & (2 * c_b - u_b - d_b >= ridge_min);
        ((clear | ridge) as u8 * GREEN_H) | ((clear | across) as u8 * GREEN_V)
    };
    // The first and last two pixels have no neighbours two steps away along the row.
    let edge = 2.min(n);
    for i in (0..edge).chain(n.saturating_sub(2).max(edge)..n) {
        out[i] = flags(gr[i], gb[i], gr_u[i], gb_u[i], gr_d[i], gb_d[i], false);
    }
    if n <= 4 {
        return;
    }
    let m = n - 4;
    let (l_r, c_r, r_r) = (&gr[..m], &gr[2..2 + m], &gr[4..4 + m]);
    let (l_b, c_b, r_b) = (&gb[..m], &gb[2..2 + m], &gb[4..4 + m]);
    let (u_r, d_r, u_b, d_b) = (
        &gr_u[2..2 + m],
        &gr_d[2..2 + m],
        &gb_u[2..2 + m],
        &gb_d[2..2 + m],
    );
    let out = &mut out[2..2 + m];
    for i in 0..m {
        let across = (2 * c_r[i] - l_r[i] - r_r[i] >= ridge_min)
            & (2 * c_b[i] - l_b[i] - r_b[i] >= ridge_min);
        out[i] = flags(c_r[i], c_b[i], u_r[i], u_b[i], d_r[i], d_b[i], across);
    }
}

/// Per pixel `g - r` and `g - b`, into slices of one element per pixel; returns their ranges.
fn colour_differences(rgb: &[u8], g_r: &mut [i16], g_b: &mut [i16]) -> Ranges {
    let mut ranges = Ranges::EMPTY;
    for ((p, gr), gb) in rgb.chunks_exact(3).zip(g_r).zip(g_b) {
        *gr = i16::from(p[1]) - i16::from(p[0]);
        *gb = i16::from(p[1]) - i16::from(p[2]);
        ranges.add(*gr, *gb);
    }
    ranges
}

/// [`colour_differences`] 32 pixels at a time: each 128-bit lane takes 16 pixels in three
/// loads, byte shuffles gather each channel, widening subtractions give the differences.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn colour_differences_avx2(rgb: &[u8], g_r: &mut [i16], g_b: &mut [i16]) -> Ranges {
    use std::arch::x86_64::*;
    let n = rgb.len() / 3;
    assert!(g_r.len() == n && g_b.len() == n, "one difference per pixel");
    // For each channel, where its 16 bytes sit in the three 16-byte loads (-1: none), the
    // same in both 128-bit lanes.
    const fn gather(channel: usize, load: usize) -> [i8; 32] {
        let mut idx = [-1i8; 32];
        let mut px = 0;
        while px < 16 {
            let byte = 3 * px + channel;
            if byte / 16 == load {
                idx[px] = (byte % 16) as i8;
                idx[16 + px] = (byte % 16) as i8;
            }
            px += 1;
        }
        idx
    }
    static IDX: [[[i8; 32]; 3]; 3] = [
        [gather(0, 0), gather(0, 1), gather(0, 2)],
        [gather(1, 0), gather(1, 1), gather(1, 2)],
        [gather(2, 0), gather(2, 1), gather(2, 2)],
    ];
    let blocks = n / 32;
    let mut ranges;
    // SAFETY: every load reads 96 bytes inside `rgb` (block < n / 32) and every store writes
    // 32 i16 inside `g_r` / `g_b`; unaligned loads and stores are used throughout.
    unsafe {
        let (mut min_r, mut max_r) = (_mm256_set1_epi16(i16::MAX), _mm256_set1_epi16(i16::MIN));
        let (mut min_b, mut max_b) = (min_r, max_r);
        for block in 0..blocks {
            let src = rgb.as_ptr().add(96 * block);
            // Lane 0 holds pixels 0..16 of the block, lane 1 pixels 16..32.
            let load = |k: usize| _mm256_loadu2_m128i(src.add(48 + k).cast(), src.add(k).cast());
            let loads = [load(0), load(16), load(32)];
            let part = |c: usize, k: usize| {
                _mm256_shuffle_epi8(loads[k], _mm256_loadu_si256(IDX[c][k].as_ptr().cast()))
            };
            let channel =
                |c: usize| _mm256_or_si256(_mm256_or_si256(part(c, 0), part(c, 1)), part(c, 2));
            let (r, g, b) = (channel(0), channel(1), channel(2));
            let lo = |v| _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v));
            let hi = |v| _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v));
            let (g_lo, g_hi) = (lo(g), hi(g));
            let (dr_lo, dr_hi) = (_mm256_sub_epi16(g_lo, lo(r)), _mm256_sub_epi16(g_hi, hi(r)));
            let (db_lo, db_hi) = (_mm256_sub_epi16(g_lo, lo(b)), _mm256_sub_epi16(g_hi, hi(b)));
            let out_r = g_r.as_mut_ptr().add(32 * block);
            let out_b = g_b.as_mut_ptr().add(32 * block);
            _mm256_storeu_si256(out_r.cast(), dr_lo);
            _mm256_storeu_si256(out_r.add(16).cast(), dr_hi);
            _mm256_storeu_si256(out_b.cast(), db_lo);
            _mm256_storeu_si256(out_b.add(16).cast(), db_hi);
            min_r = _mm256_min_epi16(min_r, _mm256_min_epi16(dr_lo, dr_hi));
            max_r = _mm256_max_epi16(max_r, _mm256_max_epi16(dr_lo, dr_hi));
            min_b = _mm256_min_epi16(min_b, _mm256_min_epi16(db_lo, db_hi));
            max_b = _mm256_max_epi16(max_b, _mm256_max_epi16(db_lo, db_hi));
        }
        // Across the 16 lanes: the two halves, then within one (SSE2, see `fold_lanes`).
        let halves = |v: __m256i| (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let min = |(a, b)| _mm_min_epi16(a, b);
        let max = |(a, b)| _mm_max_epi16(a, b);
        ranges = Ranges {
            min_r: fold_lanes(min(halves(min_r)), |a, b| _mm_min_epi16(a, b)),
            max_r: fold_lanes(max(halves(max_r)), |a, b| _mm_max_epi16(a, b)),
            min_b: fold_lanes(min(halves(min_b)), |a, b| _mm_min_epi16(a, b)),
            max_b: fold_lanes(max(halves(max_b)), |a, b| _mm_max_epi16(a, b)),
        };
    }
    let tail = colour_differences(
        &rgb[96 * blocks..],
        &mut g_r[32 * blocks..],
        &mut g_b[32 * blocks..],
    );
    ranges.merge(&tail);
    ranges
}

/// `op` over the eight i16 lanes of `x` (SSE2, part of every x86_64): 64-bit halves, 32-bit
/// pairs, then neighbours.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn fold_lanes(
    x: std::arch::x86_64::__m128i,
    op: impl Fn(std::arch::x86_64::__m128i, std::arch::x86_64::__m128i) -> std::arch::x86_64::__m128i,
) -> i16 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        let x = op(x, _mm_shuffle_epi32::<0b01_00_11_10>(x));
        let x = op(x, _mm_shuffle_epi32::<0b10_11_00_01>(x));
        let x = op(x, _mm_shufflelo_epi16::<0b10_11_00_01>(x));
        _mm_extract_epi16::<0>(x) as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn shuffled_colour_differences_equal_the_plain_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 7u32;
        // Lengths around the 32-pixel blocks, and every byte value.
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 64, 65, 1000] {
            let rgb: Vec<u8> = (0..3 * n)
                .map(|_| {
                    state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                    (state >> 24) as u8
                })
                .collect();
            let (mut fast_r, mut fast_b) = (vec![0i16; n], vec![0i16; n]);
            let (mut plain_r, mut plain_b) = (vec![0i16; n], vec![0i16; n]);
            // SAFETY: AVX2 was detected above.
            let fast = unsafe { colour_differences_avx2(&rgb, &mut fast_r, &mut fast_b) };
            let plain = colour_differences(&rgb, &mut plain_r, &mut plain_b);
            assert_eq!((fast_r, fast_b), (plain_r, plain_b), "{n} pixels");
            assert_eq!(fast, plain, "ranges of {n} pixels");
        }
    }

    /// The flags by their definition, pixel by pixel, without ring, ranges or row skipping.
    fn reference_flags(img: &RgbImage) -> Vec<u8> {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let diff = |x: i64, y: i64| {
            let p = img.get_pixel(x as u32, y as u32).0.map(i32::from);
            (p[1] - p[0], p[1] - p[2])
        };
        let shifted = |c: (i32, i32), a: (i32, i32), b: (i32, i32)| {
            2 * c.0 - a.0 - b.0 >= 2 * SHIFT_MIN && 2 * c.1 - a.1 - b.1 >= 2 * SHIFT_MIN
        };
        let mut flags = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let c = diff(x, y);
                let clear = c.0 >= i32::from(GREEN_MIN) && c.1 >= i32::from(GREEN_MIN);
                let across_rows = y >= 2 && y + 2 < h && shifted(c, diff(x, y - 2), diff(x, y + 2));
                let along_row = x >= 2 && x + 2 < w && shifted(c, diff(x - 2, y), diff(x + 2, y));
                flags.push(
                    u8::from(clear || across_rows) * GREEN_H
                        + u8::from(clear || along_row) * GREEN_V,
                );
            }
        }
        flags
    }

    #[test]
    fn flags_follow_their_definition_with_rows_skipped() {
        let mut state = 11u32;
        let mut next = move |n: u32| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) % n
        };
        for (w, h) in [(1, 1), (3, 7), (5, 5), (37, 29), (70, 41), (129, 3)] {
            // Grey rows, rows of colour noise, reddish rows with thin green lines, plain green.
            let mut img = RgbImage::new(w, h);
            for y in 0..h {
                let kind = next(4);
                for x in 0..w {
                    let v = next(256) as u8;
                    let p = match kind {
                        0 => [v, v.saturating_add(next(3) as u8), v],
                        1 => [next(256) as u8, next(256) as u8, next(256) as u8],
                        2 if x % 9 == 4 => [150, 170, 120],
                        2 => [200, 90 + next(20) as u8, 60],
                        _ => [10, 200, 30],
                    };
                    img.put_pixel(x, y, image::Rgb(p));
                }
            }
            let planes = Planes::new(&img, &mut Scratch::default());
            let expected = reference_flags(&img);
            assert_eq!(planes.green, expected, "{w}x{h}");
            let rows: Vec<bool> = expected
                .chunks(w as usize)
                .map(|r| r.iter().any(|&f| f != 0))
                .collect();
            assert_eq!(planes.row_has_green, rows, "{w}x{h}");
            let count = expected.iter().filter(|&&f| f & GREEN_H != 0).count();
            assert_eq!(planes.green_h_count as usize, count, "{w}x{h}");
            // The portable path, which machines without AVX2 take.
            let (wu, hu) = (w as usize, h as usize);
            let (mut ring, mut green) = (vec![0; 2 * RING_ROWS * wu], vec![0; wu * hu]);
            let mut rows = vec![false; hu];
            let buffers = MaskBuffers {
                ring: &mut ring,
                green: &mut green,
                rows: &mut rows,
            };
            let plain_count = masks_by_rows(img.as_raw(), (wu, hu), buffers, colour_differences);
            assert_eq!((green, plain_count as usize), (expected, count), "{w}x{h}");
        }
    }
}
