//! The default ROI detector: rectangle outlines of any line width, drawn in any green.
//!
//! 1. Green per pixel: a clear excess `g - max(r, b)` (zero for grey, high for any green
//!    paint, independent of brightness, so it survives JPEG, which keeps luminance sharp and
//!    smears only the colour), or, for thin lines whose colour JPEG mixed with a red or orange
//!    background, a shift towards green against the pixels two steps away across the line.
//! 2. Straight runs of green pixels (gaps of a couple of pixels tolerated) are grouped into
//!    horizontal and vertical bars.
//! 3. Four bars whose ends meet make a rectangle candidate; every side must be covered along
//!    its length, so calipers, text, crosses and two- or three-sided brackets never qualify.
//! 4. Each side is then placed to the pixel on full-resolution luminance: JPEG's 4:2:0
//!    chroma subsampling paints green one pixel beside a thin line, but the painted pixels
//!    alone differ in brightness from both neighbouring rows.

use image::RgbImage;

use super::{PixelBox, Roi};

/// Smallest green excess `g - max(r, b)` that marks a pixel as possibly painted.
const GREEN_MIN: u8 = 20;
/// A weak excess that still counts along a thin ridge (see `SideView::ridge_green`).
const WEAK_GREEN_MIN: u8 = 6;
/// Shift towards green, against the pixels two steps away across a line, that marks a thin line
/// over colour (see `green_masks`).
const SHIFT_MIN: i32 = 25;
/// How much greener a faint line must be than the pixels two steps to either side.
const RIDGE_MIN: i32 = 4;
/// Longest gap, in pixels, bridged inside one straight run.
const MAX_GAP: u32 = 2;
/// Shortest run kept for grouping; short pieces of a side broken by a crossing line still count.
const MIN_RUN: u32 = 3;
/// Longest gap between two pieces of one side (a crossing line, a dropout), in pixels, and as
/// a fraction of the pieces' joint length; the coverage check later bounds the total.
const MAX_BAR_GAP: u32 = 6;
const MAX_BAR_GAP_FRACTION: f32 = 0.15;
/// Shortest straight piece that can be a side.
const MIN_SIDE: u32 = 8;
/// Smallest accepted rectangle side, outline included: below this, glyphs such as a blocky
/// "D" or "0" in ultrasound annotations look like boxes.
const MIN_BOX_SIDE: u32 = 12;
/// Fraction of each side that must carry green.
const MIN_COVERAGE: f32 = 0.85;
/// How far run ends may wander between neighbouring rows of one bar.
const END_TOLERANCE: u32 = 3;
/// How far, beyond the line width and `END_TOLERANCE`, the ends of four bars may miss each
/// other at a corner and still close a rectangle, as a fraction of the box width (heavy JPEG
/// washes the colour out of thin lines near corners), and at most.
const CORNER_SLACK_FRACTION: u32 = 10;
const CORNER_SLACK_MAX: u32 = 6;
/// Smallest inside of an outline, in pixels each way: below it, a JPEG-smeared letter.
const MIN_INTERIOR: u32 = 4;
/// Most of the inside of an outline that may be green (a word's letters are not a box).
const MAX_INTERIOR_GREEN: f32 = 0.2;
/// Boxes smaller than this (outline included) must stand apart from other green marks on all
/// but one side: a letter inside a word has neighbours left and right.
const SMALL_BOX: u32 = 32;
/// Luminance step (in grey levels) below which a side's rows are not told apart by brightness.
const MIN_CONTRAST: u32 = 12;

/// A straight run of green pixels: on line `pos` (a row for horizontal runs, a column for
/// vertical ones), from `start` to `end` inclusive.
#[derive(Debug, Clone, Copy)]
struct Run {
    pos: u32,
    start: u32,
    end: u32,
}

/// Several runs on consecutive lines with matching ends: one side of an outline, seen along
/// its length. `lo..=hi` is across the bar (its thickness), `start..=end` along it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    lo: u32,
    hi: u32,
    start: u32,
    end: u32,
}

impl Bar {
    fn thickness(&self) -> u32 {
        self.hi - self.lo + 1
    }
    fn length(&self) -> u32 {
        self.end - self.start + 1
    }
}

struct Planes<'a> {
    width: u32,
    height: u32,
    rgb: &'a [u8],
    /// 1 where the pixel is green as part of a horizontal line (see `green_masks`).
    green_h: Vec<u8>,
    /// 1 where the pixel is green as part of a vertical line.
    green_v: Vec<u8>,
}

/// Buffers kept from image to image on one thread: allocating them afresh for every image
/// costs more in page faults than filling them does.
#[derive(Default)]
struct Scratch {
    g_r: Vec<i16>,
    g_b: Vec<i16>,
    green_h: Vec<u8>,
    green_v: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
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
    fn new(img: &'a RgbImage, scratch: &mut Scratch) -> Planes<'a> {
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

    fn recycle(self, scratch: &mut Scratch) {
        scratch.green_h = self.green_h;
        scratch.green_v = self.green_v;
    }

    /// Number of green pixels in `b` (either mask).
    fn green_count(&self, b: &PixelBox) -> u32 {
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
    fn green_in(&self, horizontal: bool, x: u32, y: u32) -> bool {
        let i = (y * self.width + x) as usize;
        if horizontal {
            self.green_h[i] != 0
        } else {
            self.green_v[i] != 0
        }
    }

    /// Signed green excess `g - max(r, b)`.
    #[inline]
    fn excess(&self, x: u32, y: u32) -> i32 {
        let i = 3 * (y * self.width + x) as usize;
        i32::from(self.rgb[i + 1]) - i32::from(self.rgb[i].max(self.rgb[i + 2]))
    }

    #[inline]
    fn luma(&self, x: u32, y: u32) -> i32 {
        let i = 3 * (y * self.width + x) as usize;
        let (r, g, b) = (
            i32::from(self.rgb[i]),
            i32::from(self.rgb[i + 1]),
            i32::from(self.rgb[i + 2]),
        );
        (77 * r + 150 * g + 29 * b) >> 8
    }
}

/// A readable account of what [`detect`] saw (bars, candidates and why they failed), for
/// diagnosing a miss.
pub fn explain(img: &RgbImage) -> String {
    use std::fmt::Write;
    let planes = Planes::new(img, &mut Scratch::default());
    let (hruns, vruns) = straight_runs(&planes);
    let hbars = with_faint_extensions(&planes, group_runs(hruns), Side::Top);
    let vbars = with_faint_extensions(&planes, group_runs(vruns), Side::Left);
    let mut s = String::new();
    writeln!(s, "horizontal bars (rows lo..hi, columns start..end):").unwrap();
    for b in &hbars {
        writeln!(s, "  {b:?}").unwrap();
    }
    writeln!(s, "vertical bars (columns lo..hi, rows start..end):").unwrap();
    for b in &vbars {
        writeln!(s, "  {b:?}").unwrap();
    }
    for c in assemble(&hbars, &vbars) {
        let result = score(&planes, c).map(|sc| (sc.coverage, refine_and_verify(&planes, &sc)));
        writeln!(s, "candidate {c:?}\n  -> {result:?}").unwrap();
    }
    s
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

/// All rectangle outlines found in `img`, largest first.
pub fn detect(img: &RgbImage) -> Vec<Roi> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let planes = Planes::new(img, &mut scratch);
        let rois = detect_in(&planes);
        planes.recycle(&mut scratch);
        rois
    })
}

fn detect_in(planes: &Planes) -> Vec<Roi> {
    // Masks hold 0 or 1, so a plain sum counts (and vectorises, unlike `filter().count()`).
    let green_pixels: u32 = planes.green_h.iter().map(|&g| u32::from(g)).sum();
    if green_pixels < 4 * MIN_SIDE {
        return Vec::new();
    }
    let (hruns, vruns) = straight_runs(planes);
    let hbars = with_faint_extensions(planes, group_runs(hruns), Side::Top);
    let vbars = with_faint_extensions(planes, group_runs(vruns), Side::Left);
    let mut scored: Vec<Scored> = assemble(&hbars, &vbars)
        .into_iter()
        .filter_map(|c| score(planes, c))
        .collect();
    // Several bar combinations describe one outline: the best-covered is placed and checked
    // first, and candidates overlapping an accepted box are not looked at again.
    scored.sort_by(|a, b| b.coverage.total_cmp(&a.coverage));
    let mut kept: Vec<Roi> = Vec::new();
    for s in &scored {
        if kept.iter().any(|k| k.bbox.iou(&s.rough) >= 0.5) {
            continue;
        }
        if let Some(roi) = refine_and_verify(planes, s) {
            if kept.iter().all(|k| k.bbox.iou(&roi.bbox) < 0.5) {
                kept.push(roi);
            }
        }
    }
    kept.sort_by_key(|r| std::cmp::Reverse(r.bbox.area()));
    kept
}

/// Horizontal and vertical runs of green at least `MIN_SIDE` long, in one raster pass.
fn straight_runs(p: &Planes) -> (Vec<Run>, Vec<Run>) {
    let (w, h) = (p.width, p.height);
    let mut hruns = Vec::new();
    let mut vruns = Vec::new();
    // Per column: start of the open vertical run and its last green row (u32::MAX: none open).
    let mut vstart = vec![u32::MAX; w as usize];
    let mut vlast = vec![0u32; w as usize];
    let close = |runs: &mut Vec<Run>, pos: u32, start: u32, last: u32| {
        if last - start + 1 >= MIN_RUN {
            runs.push(Run {
                pos,
                start,
                end: last,
            });
        }
    };
    for y in 0..h {
        let row_h = &p.green_h[(y * w) as usize..((y + 1) * w) as usize];
        let row_v = &p.green_v[(y * w) as usize..((y + 1) * w) as usize];
        let mut hstart = u32::MAX;
        let mut hlast = 0;
        let mut x = 0usize;
        while x < row_h.len() {
            // Most of an image is not green: skip eight empty pixels at a time.
            if x + 8 <= row_h.len()
                && u64::from_ne_bytes(row_h[x..x + 8].try_into().expect("8 bytes")) == 0
                && u64::from_ne_bytes(row_v[x..x + 8].try_into().expect("8 bytes")) == 0
            {
                x += 8;
                continue;
            }
            let (gh, gv) = (row_h[x], row_v[x]);
            let xu = x;
            x += 1;
            if gh == 0 && gv == 0 {
                continue;
            }
            let x = xu as u32;
            if gh != 0 {
                if hstart != u32::MAX && x - hlast <= MAX_GAP + 1 {
                    hlast = x;
                } else {
                    if hstart != u32::MAX {
                        close(&mut hruns, y, hstart, hlast);
                    }
                    hstart = x;
                    hlast = x;
                }
            }
            if gv == 0 {
                continue;
            }
            let xi = x as usize;
            if vstart[xi] != u32::MAX && y - vlast[xi] <= MAX_GAP + 1 {
                vlast[xi] = y;
            } else {
                if vstart[xi] != u32::MAX {
                    close(&mut vruns, x, vstart[xi], vlast[xi]);
                }
                vstart[xi] = y;
                vlast[xi] = y;
            }
        }
        if hstart != u32::MAX {
            close(&mut hruns, y, hstart, hlast);
        }
    }
    for x in 0..w as usize {
        if vstart[x] != u32::MAX {
            close(&mut vruns, x as u32, vstart[x], vlast[x]);
        }
    }
    vruns.sort_by_key(|r| (r.pos, r.start));
    (hruns, vruns)
}

/// Groups runs (sorted by line, then start) into bars: a run continues a bar from the previous
/// line when both its ends are within `END_TOLERANCE` of that bar's last run.
fn group_runs(runs: Vec<Run>) -> Vec<Bar> {
    struct Open {
        bar: Bar,
        last: Run,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut bars = Vec::new();
    let mut i = 0;
    while i < runs.len() {
        let pos = runs[i].pos;
        // Bars that did not reach the previous line are finished.
        let (done, still): (Vec<Open>, Vec<Open>) =
            open.into_iter().partition(|o| o.last.pos + 1 < pos);
        bars.extend(done.into_iter().map(|o| o.bar));
        open = still;
        while i < runs.len() && runs[i].pos == pos {
            let r = runs[i];
            let continues = open.iter_mut().find(|o| {
                o.last.pos + 1 == pos
                    && o.last.start.abs_diff(r.start) <= END_TOLERANCE
                    && o.last.end.abs_diff(r.end) <= END_TOLERANCE
            });
            match continues {
                Some(o) => {
                    o.bar.hi = pos;
                    o.bar.start = o.bar.start.min(r.start);
                    o.bar.end = o.bar.end.max(r.end);
                    o.last = r;
                }
                None => open.push(Open {
                    bar: Bar {
                        lo: pos,
                        hi: pos,
                        start: r.start,
                        end: r.end,
                    },
                    last: r,
                }),
            }
            i += 1;
        }
    }
    bars.extend(open.into_iter().map(|o| o.bar));
    // Wider than long: a perpendicular side crossed end-on, not a piece of this one.
    bars.retain(|b| b.length() >= b.thickness());
    // Merging can also join two outlines that happen to line up, so the pieces stay candidates
    // beside the merged bars; the rectangle check decides.
    let merged = merge_bars(bars.clone());
    for m in merged {
        if !bars.contains(&m) {
            bars.push(m);
        }
    }
    // A side is long and thin; a filled blob or a thick stroke seen end-on is not.
    bars.retain(|b| b.length() >= MIN_SIDE && b.length() >= 2 * b.thickness());
    bars
}

/// Pieces of one side become one bar: pieces on the same lines separated by a short gap (a
/// crossing line), and pieces lying side by side along most of their length (JPEG's faint
/// colour fringe beside a line, whose ends are ragged).
fn merge_bars(mut bars: Vec<Bar>) -> Vec<Bar> {
    // Beyond this many pieces the picture is noise, not outlines; merging would only cost time.
    const MAX_PIECES: usize = 4000;
    if bars.len() > MAX_PIECES {
        return bars;
    }
    let gap = |a0: u32, a1: u32, b0: u32, b1: u32| -> i64 {
        i64::from(a0.max(b0)) - i64::from(a1.min(b1)) - 1
    };
    let mergeable = |a: &Bar, b: &Bar| {
        let across = gap(a.lo, a.hi, b.lo, b.hi);
        let along = gap(a.start, a.end, b.start, b.end);
        let joint = (a.end.max(b.end) - a.start.min(b.start) + 1) as f32;
        let max_gap = (MAX_BAR_GAP as f32).max(MAX_BAR_GAP_FRACTION * joint) as i64;
        let collinear = a.lo.abs_diff(b.lo) <= 2 && a.hi.abs_diff(b.hi) <= 2 && along <= max_gap;
        let overlap = -along;
        // Overlap along half of the longer piece: a side's fringe, not the stub of a crossing side.
        let side_by_side = across <= 0 && overlap * 2 >= i64::from(a.length().max(b.length()));
        collinear || side_by_side
    };
    let mut changed = true;
    while changed {
        changed = false;
        let mut i = 0;
        while i < bars.len() {
            let mut j = i + 1;
            while j < bars.len() {
                if mergeable(&bars[i], &bars[j]) {
                    let b = bars.swap_remove(j);
                    let a = &mut bars[i];
                    a.lo = a.lo.min(b.lo);
                    a.hi = a.hi.max(b.hi);
                    a.start = a.start.min(b.start);
                    a.end = a.end.max(b.end);
                    changed = true;
                } else {
                    j += 1;
                }
            }
            i += 1;
        }
    }
    bars
}

/// Adds, beside each thin bar, the bar lengthened along its own lines through faintly green
/// pixels (gaps up to `MAX_GAP`): heavy JPEG compression washes out the colour of a one- or
/// two-pixel line over a bright background. The original stays a candidate too, since a faint
/// halo can also lengthen a bar wrongly; the rectangle check decides.
/// `side` gives the orientation: `Side::Top` for horizontal bars, `Side::Left` for vertical.
fn with_faint_extensions(planes: &Planes, bars: Vec<Bar>, side: Side) -> Vec<Bar> {
    const THIN: u32 = 3;
    let view = SideView { planes, side };
    let len = if side.horizontal() {
        planes.width
    } else {
        planes.height
    };
    let faint_at = |b: &Bar, along: u32| (b.lo..=b.hi).any(|c| view.ridge_green(along, c));
    let mut out = bars.clone();
    for bar in bars.into_iter().filter(|b| b.thickness() <= THIN) {
        let mut b = bar;
        let (mut gap, mut a) = (0, b.end + 1);
        while a < len && gap <= MAX_GAP {
            if faint_at(&b, a) {
                b.end = a;
                gap = 0;
            } else {
                gap += 1;
            }
            a += 1;
        }
        let (mut gap, mut a) = (0, b.start);
        while a > 0 && gap <= MAX_GAP {
            a -= 1;
            if faint_at(&b, a) {
                b.start = a;
                gap = 0;
            } else {
                gap += 1;
            }
        }
        if b != bar {
            out.push(b);
        }
    }
    out
}

/// Four bars that close a rectangle: `top`/`bottom` horizontal, `left`/`right` vertical.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    top: Bar,
    bottom: Bar,
    left: Bar,
    right: Bar,
}

fn assemble(hbars: &[Bar], vbars: &[Bar]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for top in hbars {
        for bottom in hbars {
            if bottom.lo <= top.hi + 1 {
                continue;
            }
            let slack =
                (top.length().max(bottom.length()) / CORNER_SLACK_FRACTION).min(CORNER_SLACK_MAX);
            let tol = END_TOLERANCE + slack + top.thickness().max(bottom.thickness());
            if top.start.abs_diff(bottom.start) > tol || top.end.abs_diff(bottom.end) > tol {
                continue;
            }
            let x0 = top.start.min(bottom.start);
            let x1 = top.end.max(bottom.end);
            let fits_height =
                |v: &Bar| v.start.abs_diff(top.lo) <= tol && v.end.abs_diff(bottom.hi) <= tol;
            let misfit = |v: &Bar, edge: u32, x: u32| {
                edge.abs_diff(x) + v.start.abs_diff(top.lo) + v.end.abs_diff(bottom.hi)
            };
            // The few best-fitting bars on each side: the closest fit can be a faint
            // extension that the coverage check then rejects.
            const CHOICES: usize = 3;
            let best = |edge: fn(&Bar) -> u32, x: u32| {
                let mut fitting: Vec<&Bar> = vbars
                    .iter()
                    .filter(|v| fits_height(v) && edge(v).abs_diff(x) <= tol)
                    .collect();
                fitting.sort_by_key(|v| misfit(v, edge(v), x));
                fitting.truncate(CHOICES);
                fitting
            };
            let lefts = best(|v| v.lo, x0);
            let rights = best(|v| v.hi, x1);
            for &&left in &lefts {
                for &&right in &rights {
                    if right.lo > left.hi + 1 {
                        out.push(Candidate {
                            top: *top,
                            bottom: *bottom,
                            left,
                            right,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Which side of the rectangle a band belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Top,
    Right,
    Bottom,
    Left,
}

impl Side {
    fn horizontal(self) -> bool {
        matches!(self, Side::Top | Side::Bottom)
    }
}

/// Reads the planes with coordinates along and across one side.
struct SideView<'a> {
    planes: &'a Planes<'a>,
    side: Side,
}

impl SideView<'_> {
    fn across_len(&self) -> u32 {
        if self.side.horizontal() {
            self.planes.height
        } else {
            self.planes.width
        }
    }
    fn xy(&self, along: u32, across: u32) -> (u32, u32) {
        if self.side.horizontal() {
            (along, across)
        } else {
            (across, along)
        }
    }
    fn green(&self, along: u32, across: u32) -> bool {
        let (x, y) = self.xy(along, across);
        self.planes.green_in(self.side.horizontal(), x, y)
    }
    /// Clearly green, or faintly green along a thin ridge: greener than the pixels two steps
    /// away on both sides across the line. A thin line washed out by JPEG is such a ridge;
    /// the broad faint halo around any green mark is not.
    fn ridge_green(&self, along: u32, across: u32) -> bool {
        if self.green(along, across) {
            return true;
        }
        let e = self.excess(along, across);
        if e < i32::from(WEAK_GREEN_MIN) || across < 2 || across + 2 >= self.across_len() {
            return false;
        }
        e >= self.excess(along, across - 2) + RIDGE_MIN
            && e >= self.excess(along, across + 2) + RIDGE_MIN
    }
    fn luma(&self, along: u32, across: u32) -> i32 {
        let (x, y) = self.xy(along, across);
        self.planes.luma(x, y)
    }
    fn excess(&self, along: u32, across: u32) -> i32 {
        let (x, y) = self.xy(along, across);
        self.planes.excess(x, y)
    }

    /// Median over positions of the green excess on line `across`.
    fn median_excess(&self, across: u32, positions: &[u32]) -> i32 {
        let mut v: Vec<i32> = positions.iter().map(|&a| self.excess(a, across)).collect();
        let mid = v.len() / 2;
        *v.select_nth_unstable(mid).1
    }

    /// Without a brightness step, the paint's edge is where the colour crosses half-way from
    /// the background to the line's plateau (JPEG blurs colour symmetrically about the edge).
    fn half_height_band(&self, lo: u32, hi: u32, refs: &[u32], positions: &[u32]) -> (u32, u32) {
        let profile: Vec<i32> = (lo..=hi)
            .map(|line| self.median_excess(line, positions))
            .collect();
        let plateau = *profile.iter().max().unwrap();
        let background = refs
            .iter()
            .map(|&r| self.median_excess(r, positions))
            .max()
            .unwrap_or(0);
        if plateau <= background {
            return (lo, hi);
        }
        let half = (plateau + background + 1) / 2;
        let mut painted = (lo..=hi).zip(&profile).filter(|(_, &e)| e >= half);
        let first = painted.next().map_or(lo, |(line, _)| line);
        let last = painted.last().map_or(first, |(line, _)| line);
        (first, last)
    }

    /// Fraction of positions along `[a0, a1]` whose pixel on line `across` is green.
    fn green_fraction(&self, across: u32, a0: u32, a1: u32) -> f32 {
        let n = (a0..=a1).filter(|&a| self.green(a, across)).count();
        n as f32 / (a1 - a0 + 1) as f32
    }

    /// Fraction of positions along `[a0, a1]` with green anywhere in lines `lo..=hi`, clear
    /// or along a faint ridge.
    fn coverage(&self, lo: u32, hi: u32, a0: u32, a1: u32) -> f32 {
        let n = (a0..=a1)
            .filter(|&a| (lo..=hi).any(|c| self.ridge_green(a, c)))
            .count();
        n as f32 / (a1 - a0 + 1) as f32
    }

    /// Median over positions of |luma(line) - luma(reference line)|.
    fn median_step(&self, line: u32, reference: u32, positions: &[u32]) -> u32 {
        let mut d: Vec<u32> = positions
            .iter()
            .map(|&a| self.luma(a, line).abs_diff(self.luma(a, reference)))
            .collect();
        let mid = d.len() / 2;
        *d.select_nth_unstable(mid).1
    }

    /// Places the painted lines of this side exactly. `lo..=hi` is the band found by colour;
    /// positions `[a0, a1]` run along the side, clear of the corners.
    fn refine(&self, lo: u32, hi: u32, a0: u32, a1: u32) -> (u32, u32) {
        let last = self.across_len() - 1;
        let (first, end) = self.place(lo, hi, a0, a1);
        // Beyond the image border there is no background to compare a line with: a band that
        // reached the border keeps its border line (better one tinted line too many than a
        // painted one left behind).
        let first = if lo == 0 && first == 1 { 0 } else { first };
        let end = if hi == last && end + 1 == last {
            last
        } else {
            end
        };
        (first, end)
    }

    fn place(&self, lo: u32, hi: u32, a0: u32, a1: u32) -> (u32, u32) {
        let last = self.across_len() - 1;
        let (mut lo, mut hi) = (lo, hi);
        // Take in neighbouring lines that are still green along most of the side.
        for _ in 0..2 {
            if lo > 0 && self.green_fraction(lo - 1, a0, a1) >= 0.5 {
                lo -= 1;
            }
            if hi < last && self.green_fraction(hi + 1, a0, a1) >= 0.5 {
                hi += 1;
            }
        }
        if a1 < a0 + 3 {
            return (lo, hi);
        }
        let step = ((a1 - a0 + 1) / 256).max(1) as usize;
        let positions: Vec<u32> = (a0..=a1).step_by(step).collect();
        let refs: Vec<u32> = [lo.checked_sub(1), (hi < last).then_some(hi + 1)]
            .into_iter()
            .flatten()
            .collect();
        if refs.is_empty() {
            return (lo, hi);
        }
        // A painted line differs in brightness from the background on both sides of the band;
        // a line only tinted by chroma bleeding matches the background next to it.
        let steps: Vec<u32> = (lo..=hi)
            .map(|line| {
                refs.iter()
                    .map(|&r| self.median_step(line, r, &positions))
                    .min()
                    .unwrap()
            })
            .collect();
        let strongest = *steps.iter().max().unwrap();
        if strongest < MIN_CONTRAST {
            return self.half_height_band(lo, hi, &refs, &positions);
        }
        let threshold = (strongest / 2).max(6);
        let painted: Vec<u32> = (lo..=hi)
            .zip(&steps)
            .filter(|(_, &s)| s >= threshold)
            .map(|(line, _)| line)
            .collect();
        let (first, last) = (painted[0], *painted.last().expect("the strongest line"));
        // Where the paint is about as bright as the background on one side, the brightness
        // step can single out the fringe instead: the band must hold the side's greenest line.
        let greenest = (lo..=hi)
            .max_by_key(|&line| self.median_excess(line, &positions))
            .expect("a non-empty band");
        if (first..=last).contains(&greenest) {
            (first, last)
        } else {
            self.half_height_band(lo, hi, &refs, &positions)
        }
    }
}

/// A candidate whose sides are all covered: its rough outer box (from the bars) and the
/// smallest side coverage, which is its confidence.
struct Scored {
    candidate: Candidate,
    rough: PixelBox,
    coverage: f32,
}

/// Checks size and side coverage, the cheap tests, before any side is placed exactly.
fn score(planes: &Planes, c: Candidate) -> Option<Scored> {
    let view = |side| SideView { planes, side };
    let x0 = c.left.lo.min(c.top.start).min(c.bottom.start);
    let x1 = c.right.hi.max(c.top.end).max(c.bottom.end);
    let y0 = c.top.lo.min(c.left.start).min(c.right.start);
    let y1 = c.bottom.hi.max(c.left.end).max(c.right.end);
    if x1 - x0 + 1 < MIN_BOX_SIDE || y1 - y0 + 1 < MIN_BOX_SIDE {
        return None;
    }
    let sides = [
        (Side::Top, c.top, x0, x1),
        (Side::Right, c.right, y0, y1),
        (Side::Bottom, c.bottom, x0, x1),
        (Side::Left, c.left, y0, y1),
    ];
    let mut coverage = f32::INFINITY;
    for (side, bar, a0, a1) in sides {
        coverage = coverage.min(view(side).coverage(bar.lo, bar.hi, a0, a1));
        if coverage < MIN_COVERAGE {
            return None;
        }
    }
    Some(Scored {
        candidate: c,
        rough: PixelBox {
            x0,
            y0,
            x1: x1 + 1,
            y1: y1 + 1,
        },
        coverage,
    })
}

/// Places each side of a covered candidate exactly and checks what a drawn box must be.
fn refine_and_verify(planes: &Planes, scored: &Scored) -> Option<Roi> {
    let c = scored.candidate;
    let min_coverage = scored.coverage;
    let view = |side| SideView { planes, side };
    let (top, right, bottom, left) = (
        view(Side::Top),
        view(Side::Right),
        view(Side::Bottom),
        view(Side::Left),
    );
    // Measure each side between the other two, clear of the corners.
    let (hx0, hx1) = (c.left.hi + 2, c.right.lo.saturating_sub(2));
    let (vy0, vy1) = (c.top.hi + 2, c.bottom.lo.saturating_sub(2));
    let refine_or_keep = |v: &SideView, b: Bar, a0: u32, a1: u32| {
        if a1 > a0 {
            v.refine(b.lo, b.hi, a0, a1)
        } else {
            (b.lo, b.hi)
        }
    };
    let (t_lo, t_hi) = refine_or_keep(&top, c.top, hx0, hx1);
    let (b_lo, b_hi) = refine_or_keep(&bottom, c.bottom, hx0, hx1);
    let (l_lo, l_hi) = refine_or_keep(&left, c.left, vy0, vy1);
    let (r_lo, r_hi) = refine_or_keep(&right, c.right, vy0, vy1);
    if b_lo <= t_hi + 1
        || r_lo <= l_hi + 1
        || r_hi + 1 - l_lo < MIN_BOX_SIDE
        || b_hi + 1 - t_lo < MIN_BOX_SIDE
    {
        return None;
    }
    let bbox = PixelBox {
        x0: l_lo,
        y0: t_lo,
        x1: r_hi + 1,
        y1: b_hi + 1,
    };
    let inside = PixelBox {
        x0: l_hi + 1,
        y0: t_hi + 1,
        x1: r_lo,
        y1: b_lo,
    };
    if inside.width() < MIN_INTERIOR || inside.height() < MIN_INTERIOR {
        return None;
    }
    if green_fraction(planes, &shrink(&inside, 2)) > MAX_INTERIOR_GREEN {
        return None;
    }
    if bbox.width().max(bbox.height()) < SMALL_BOX && crowded_sides(planes, &bbox) >= 2 {
        return None;
    }
    Some(Roi {
        bbox,
        confidence: Some(min_coverage),
        line: Some([
            t_hi - t_lo + 1,
            r_hi - r_lo + 1,
            b_hi - b_lo + 1,
            l_hi - l_lo + 1,
        ]),
    })
}

fn shrink(b: &PixelBox, by: u32) -> PixelBox {
    let x0 = (b.x0 + by).min(b.x1);
    let y0 = (b.y0 + by).min(b.y1);
    PixelBox {
        x0,
        y0,
        x1: b.x1.saturating_sub(by).max(x0),
        y1: b.y1.saturating_sub(by).max(y0),
    }
}

/// Fraction of the pixels of `b` that are clearly green (0 for an empty box).
fn green_fraction(planes: &Planes, b: &PixelBox) -> f32 {
    let area = b.area();
    if area == 0 {
        return 0.0;
    }
    planes.green_count(b) as f32 / area as f32
}

/// How many sides of `b` have other green marks close outside: a strip from 2 to 6 pixels
/// beyond the outline, along the side, more than a tenth green.
fn crowded_sides(planes: &Planes, b: &PixelBox) -> usize {
    const NEAR: u32 = 2;
    const FAR: u32 = 6;
    let (w, h) = (planes.width, planes.height);
    let strips = [
        PixelBox {
            x0: b.x0,
            x1: b.x1,
            y0: b.y0.saturating_sub(FAR),
            y1: b.y0.saturating_sub(NEAR),
        },
        PixelBox {
            x0: b.x0,
            x1: b.x1,
            y0: (b.y1 + NEAR).min(h),
            y1: (b.y1 + FAR).min(h),
        },
        PixelBox {
            x0: b.x0.saturating_sub(FAR),
            x1: b.x0.saturating_sub(NEAR),
            y0: b.y0,
            y1: b.y1,
        },
        PixelBox {
            x0: (b.x1 + NEAR).min(w),
            x1: (b.x1 + FAR).min(w),
            y0: b.y0,
            y1: b.y1,
        },
    ];
    strips
        .iter()
        .filter(|s| green_fraction(planes, s) > 0.1)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, v: u8) -> RgbImage {
        RgbImage::from_pixel(w, h, image::Rgb([v, v, v]))
    }

    fn outline(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, t: u32) {
        for y in y0..y1 {
            for x in x0..x1 {
                if x < x0 + t || x >= x1 - t || y < y0 + t || y >= y1 - t {
                    img.put_pixel(x, y, image::Rgb([0, 255, 0]));
                }
            }
        }
    }

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

    #[test]
    fn degenerate_images_do_not_break_it() {
        let green = image::Rgb([0, 255, 0]);
        for (w, h) in [
            (1, 1),
            (1, 60),
            (60, 1),
            (2, 2),
            (3, 3),
            (5, 200),
            (200, 5),
            (13, 13),
        ] {
            assert!(
                detect(&RgbImage::from_pixel(w, h, green)).is_empty(),
                "{w}x{h}"
            );
            let mut checker = RgbImage::from_pixel(w, h, image::Rgb([30, 30, 30]));
            for (x, y, p) in checker.enumerate_pixels_mut() {
                if (x + y) % 2 == 0 {
                    *p = green;
                }
            }
            let _ = detect(&checker);
        }
        // An outline that is the image border itself.
        let mut framed = grey(40, 30, 80);
        outline(&mut framed, 0, 0, 40, 30, 2);
        let rois = detect(&framed);
        assert_eq!(rois.len(), 1);
        assert_eq!(
            rois[0].bbox,
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 40,
                y1: 30
            }
        );
    }

    #[test]
    fn finds_one_pixel_outline_exactly() {
        let mut img = grey(64, 48, 90);
        outline(&mut img, 10, 8, 40, 30, 1);
        let rois = detect(&img);
        assert_eq!(rois.len(), 1);
        assert_eq!(
            rois[0].bbox,
            PixelBox {
                x0: 10,
                y0: 8,
                x1: 40,
                y1: 30
            }
        );
        assert_eq!(rois[0].line, Some([1, 1, 1, 1]));
    }

    #[test]
    fn filled_block_and_bracket_are_not_boxes() {
        let mut img = grey(80, 80, 40);
        for y in 5..25 {
            for x in 5..30 {
                img.put_pixel(x, y, image::Rgb([0, 255, 0]));
            }
        }
        // three sides of a rectangle
        outline(&mut img, 40, 40, 70, 70, 2);
        for y in 42..68 {
            for x in 68..70 {
                img.put_pixel(x, y, image::Rgb([40, 40, 40]));
            }
        }
        assert!(detect(&img).is_empty());
    }

    #[test]
    fn nested_and_separate_boxes_all_found_largest_first() {
        let mut img = grey(120, 100, 60);
        outline(&mut img, 5, 5, 70, 60, 3);
        outline(&mut img, 20, 20, 40, 40, 1);
        outline(&mut img, 80, 60, 110, 90, 2);
        let rois = detect(&img);
        let boxes: Vec<_> = rois.iter().map(|r| r.bbox).collect();
        assert_eq!(boxes.len(), 3, "{boxes:?}");
        assert_eq!(
            boxes[0],
            PixelBox {
                x0: 5,
                y0: 5,
                x1: 70,
                y1: 60
            }
        );
        assert_eq!(
            boxes[1],
            PixelBox {
                x0: 80,
                y0: 60,
                x1: 110,
                y1: 90
            }
        );
        assert_eq!(
            boxes[2],
            PixelBox {
                x0: 20,
                y0: 20,
                x1: 40,
                y1: 40
            }
        );
    }
}
