//! The pixels the detector looks at: two green masks (for horizontal and for vertical lines)
//! computed from `g - r` and `g - b`, vectorised, in buffers reused from image to image.

use image::RgbImage;

use super::super::PixelBox;

/// Smallest green excess `g - max(r, b)` that marks a pixel as possibly painted.
const GREEN_MIN: u8 = 20;

/// Shift towards green, against the pixels two steps away across a line, that marks a thin line
/// over colour (see `green_masks`).
const SHIFT_MIN: i32 = 25;

pub(super) struct Planes<'a> {
    pub(super) width: u32,
    pub(super) height: u32,
    rgb: &'a [u8],
    /// 1 where the pixel is green as part of a horizontal line (see `green_masks`).
    pub(super) green_h: Vec<u8>,
    /// 1 where the pixel is green as part of a vertical line.
    pub(super) green_v: Vec<u8>,
}

/// Buffers kept from image to image on one thread: allocating them afresh for every image
/// costs more in page faults than filling them does.
#[derive(Default)]
pub(super) struct Scratch {
    g_r: Vec<i16>,
    g_b: Vec<i16>,
    green_h: Vec<u8>,
    green_v: Vec<u8>,
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
        let mut green_h = std::mem::take(&mut scratch.green_h);
        let mut green_v = std::mem::take(&mut scratch.green_v);
        let n = (img.width() * img.height()) as usize;
        green_masks(
            img,
            sized(&mut scratch.g_r, n),
            sized(&mut scratch.g_b, n),
            sized(&mut green_h, n),
            sized(&mut green_v, n),
        );
        Planes {
            width: img.width(),
            height: img.height(),
            rgb: img.as_raw(),
            green_h,
            green_v,
        }
    }

    pub(super) fn recycle(self, scratch: &mut Scratch) {
        scratch.green_h = self.green_h;
        scratch.green_v = self.green_v;
    }

    /// Number of green pixels in `b` (either mask).
    pub(super) fn green_count(&self, b: &PixelBox) -> u32 {
        let w = self.width as usize;
        let (x0, x1) = (b.x0.min(self.width) as usize, b.x1.min(self.width) as usize);
        let (y0, y1) = (
            b.y0.min(self.height) as usize,
            b.y1.min(self.height) as usize,
        );
        let mut n = 0u32;
        for y in y0..y1 {
            let (h_row, v_row) = (
                &self.green_h[y * w + x0..y * w + x1.max(x0)],
                &self.green_v[y * w + x0..y * w + x1.max(x0)],
            );
            n += h_row
                .iter()
                .zip(v_row)
                .map(|(&a, &b)| u32::from(a | b))
                .sum::<u32>();
        }
        n
    }

    /// Green as part of a horizontal (`true`) or vertical line.
    #[inline]
    pub(super) fn green_in(&self, horizontal: bool, x: u32, y: u32) -> bool {
        let i = (y * self.width + x) as usize;
        if horizontal {
            self.green_h[i] != 0
        } else {
            self.green_v[i] != 0
        }
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

/// Two masks, 1 for green: a clear excess `g - max(r, b)`, or a pixel shifted towards green
/// by `SHIFT_MIN` against the pixels two steps away across a line, above and below (first mask,
/// for horizontal lines) or left and right (second, for vertical lines). The shift finds a thin
/// line whose colour JPEG has mixed with a red or orange background; a white or grey line over
/// colour shifts away from green and is not taken.
fn green_masks(img: &RgbImage, g_r: &mut [i16], g_b: &mut [i16], rows: &mut [u8], cols: &mut [u8]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { green_masks_avx2(img.as_raw(), w, h, g_r, g_b, rows, cols) };
        return;
    }
    colour_differences(img.as_raw(), g_r, g_b);
    masks_from_differences(w, h, g_r, g_b, rows, cols);
}

/// [`green_masks`] compiled for AVX2, with a shuffle-based RGB de-interleave; the mask loops
/// vectorise several times wider than with the baseline SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn green_masks_avx2(
    rgb: &[u8],
    w: usize,
    h: usize,
    g_r: &mut [i16],
    g_b: &mut [i16],
    rows: &mut [u8],
    cols: &mut [u8],
) {
    // SAFETY: this function only runs where AVX2 (hence SSSE3 and SSE4.1) is available.
    unsafe { colour_differences_ssse3(rgb, g_r, g_b) };
    masks_from_differences(w, h, g_r, g_b, rows, cols);
}

/// Per pixel `g - r` and `g - b`, into slices of one element per pixel.
fn colour_differences(rgb: &[u8], g_r: &mut [i16], g_b: &mut [i16]) {
    for ((p, gr), gb) in rgb.chunks_exact(3).zip(g_r).zip(g_b) {
        *gr = i16::from(p[1]) - i16::from(p[0]);
        *gb = i16::from(p[1]) - i16::from(p[2]);
    }
}

/// [`colour_differences`] 16 pixels at a time: three loads, byte shuffles to gather each
/// channel, widening subtractions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3,sse4.1")]
unsafe fn colour_differences_ssse3(rgb: &[u8], g_r: &mut [i16], g_b: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = rgb.len() / 3;
    assert!(g_r.len() == n && g_b.len() == n, "one difference per pixel");
    // For each channel, where its 16 bytes sit in the three 16-byte loads (-1: none).
    const fn gather(channel: usize, load: usize) -> [i8; 16] {
        let mut idx = [-1i8; 16];
        let mut px = 0;
        while px < 16 {
            let byte = 3 * px + channel;
            if byte / 16 == load {
                idx[px] = (byte % 16) as i8;
            }
            px += 1;
        }
        idx
    }
    const IDX: [[[i8; 16]; 3]; 3] = [
        [gather(0, 0), gather(0, 1), gather(0, 2)],
        [gather(1, 0), gather(1, 1), gather(1, 2)],
        [gather(2, 0), gather(2, 1), gather(2, 2)],
    ];
    let blocks = n / 16;
    // SAFETY: every load reads 48 bytes inside `rgb` (block < n / 16) and every store writes
    // 16 i16 inside `g_r` / `g_b`; unaligned loads and stores are used throughout.
    unsafe {
        let masks: [[__m128i; 3]; 3] = IDX.map(|c| c.map(|m| _mm_loadu_si128(m.as_ptr().cast())));
        for block in 0..blocks {
            let src = rgb.as_ptr().add(48 * block);
            let loads = [
                _mm_loadu_si128(src.cast()),
                _mm_loadu_si128(src.add(16).cast()),
                _mm_loadu_si128(src.add(32).cast()),
            ];
            let channel = |c: usize| {
                _mm_or_si128(
                    _mm_or_si128(
                        _mm_shuffle_epi8(loads[0], masks[c][0]),
                        _mm_shuffle_epi8(loads[1], masks[c][1]),
                    ),
                    _mm_shuffle_epi8(loads[2], masks[c][2]),
                )
            };
            let (r, g, b) = (channel(0), channel(1), channel(2));
            let widen_lo = |v| _mm_cvtepu8_epi16(v);
            let widen_hi = |v| _mm_cvtepu8_epi16(_mm_srli_si128(v, 8));
            let out_r = g_r.as_mut_ptr().add(16 * block);
            let out_b = g_b.as_mut_ptr().add(16 * block);
            _mm_storeu_si128(out_r.cast(), _mm_sub_epi16(widen_lo(g), widen_lo(r)));
            _mm_storeu_si128(out_r.add(8).cast(), _mm_sub_epi16(widen_hi(g), widen_hi(r)));
            _mm_storeu_si128(out_b.cast(), _mm_sub_epi16(widen_lo(g), widen_lo(b)));
            _mm_storeu_si128(out_b.add(8).cast(), _mm_sub_epi16(widen_hi(g), widen_hi(b)));
        }
    }
    colour_differences(
        &rgb[48 * blocks..],
        &mut g_r[16 * blocks..],
        &mut g_b[16 * blocks..],
    );
}

/// Both masks from the colour differences (see [`green_masks`]).
#[inline(always)]
fn masks_from_differences(
    w: usize,
    h: usize,
    g_r: &[i16],
    g_b: &[i16],
    across_rows: &mut [u8],
    across_cols: &mut [u8],
) {
    let zeros = vec![0i16; w];
    for y in 0..h {
        let row = y * w..(y + 1) * w;
        // Rows two above and below; at the top and bottom edges a row of zeros stands in and
        // the row ridge is not used.
        let has_rows = y >= 2 && y + 2 < h;
        let (up, down) = if has_rows {
            ((y - 2) * w..(y - 1) * w, (y + 2) * w..(y + 3) * w)
        } else {
            (0..0, 0..0)
        };
        let (gr_ud, gb_ud): ([&[i16]; 2], [&[i16]; 2]) = if has_rows {
            (
                [&g_r[up.clone()], &g_r[down.clone()]],
                [&g_b[up], &g_b[down]],
            )
        } else {
            ([&zeros, &zeros], [&zeros, &zeros])
        };
        mask_row(
            &g_r[row.clone()],
            &g_b[row.clone()],
            gr_ud,
            gb_ud,
            has_rows,
            &mut across_rows[row.clone()],
            &mut across_cols[row],
        );
    }
}

/// One row of both masks (see [`green_masks`]): `gr`/`gb` are g - r and g - b on the row,
/// `gr_ud`/`gb_ud` on the rows two above and two below.
#[inline(always)]
fn mask_row(
    gr: &[i16],
    gb: &[i16],
    gr_ud: [&[i16]; 2],
    gb_ud: [&[i16]; 2],
    has_rows: bool,
    out_rows: &mut [u8],
    out_cols: &mut [u8],
) {
    let n = gr.len();
    // Equal lengths, asserted once, let the compiler drop every bounds check and vectorise.
    assert!(gb.len() == n && out_rows.len() == n && out_cols.len() == n);
    assert!(gr_ud.iter().chain(&gb_ud).all(|s| s.len() == n));
    let (gr_u, gr_d, gb_u, gb_d) = (gr_ud[0], gr_ud[1], gb_ud[0], gb_ud[1]);
    let clear_min = i16::from(GREEN_MIN);
    let ridge_min = 2 * SHIFT_MIN as i16;
    let rows_on = i16::from(has_rows);
    for i in 0..n {
        let clear = (gr[i] >= clear_min) & (gb[i] >= clear_min);
        let ridge_r = 2 * gr[i] - gr_u[i] - gr_d[i];
        let ridge_b = 2 * gb[i] - gb_u[i] - gb_d[i];
        let ridge = (ridge_r >= ridge_min) & (ridge_b >= ridge_min) & (rows_on != 0);
        out_rows[i] = (clear | ridge) as u8;
        out_cols[i] = clear as u8;
    }
    if n > 4 {
        let m = n - 4;
        let (l, c, r) = (&gr[..m], &gr[2..2 + m], &gr[4..4 + m]);
        let (lb, cb, rb) = (&gb[..m], &gb[2..2 + m], &gb[4..4 + m]);
        let out = &mut out_cols[2..2 + m];
        for i in 0..m {
            let ridge_r = 2 * c[i] - l[i] - r[i];
            let ridge_b = 2 * cb[i] - lb[i] - rb[i];
            out[i] |= ((ridge_r >= ridge_min) & (ridge_b >= ridge_min)) as u8;
        }
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
        // Lengths around the 16-pixel blocks, and every byte value.
        for n in [0usize, 1, 15, 16, 17, 33, 1000] {
            let rgb: Vec<u8> = (0..3 * n)
                .map(|_| {
                    state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                    (state >> 24) as u8
                })
                .collect();
            let (mut fast_r, mut fast_b) = (vec![0i16; n], vec![0i16; n]);
            let (mut plain_r, mut plain_b) = (vec![0i16; n], vec![0i16; n]);
            // SAFETY: AVX2 (so SSSE3 and SSE4.1) was detected above.
            unsafe { colour_differences_ssse3(&rgb, &mut fast_r, &mut fast_b) };
            colour_differences(&rgb, &mut plain_r, &mut plain_b);
            assert_eq!((fast_r, fast_b), (plain_r, plain_b), "{n} pixels");
        }
    }
}
