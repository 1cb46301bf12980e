//! The default ROI detector: rectangle outlines of any line width, drawn in any green.
//!
//! 1. Green excess `g - max(r, b)` per pixel: zero for grey, high for any green paint, and
//!    independent of brightness, so it survives JPEG (which keeps luminance sharp and smears
//!    only the colour).
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
/// A weaker excess still counts where the pixel is this much greener than its surroundings
/// (a thin line on a red retina or an orange Doppler map, whose colour JPEG mixes with the line).
const WEAK_GREEN_MIN: u8 = 6;
const SHIFT_MIN: i32 = 40;
/// How much greener a faint line must be than the pixels two steps to either side.
const RIDGE_MIN: i32 = 4;
/// Side of the blocks whose mean colour stands for a pixel's surroundings.
const BLOCK: u32 = 8;
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
    /// 1 where the pixel is clearly green, else 0.
    green: Vec<u8>,
}

impl<'a> Planes<'a> {
    fn new(img: &'a RgbImage) -> Planes<'a> {
        Planes {
            width: img.width(),
            height: img.height(),
            rgb: img.as_raw(),
            green: green_mask(img),
        }
    }

    #[inline]
    fn green(&self, x: u32, y: u32) -> bool {
        self.green[(y * self.width + x) as usize] != 0
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
    let planes = Planes::new(img);
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
        writeln!(
            s,
            "candidate {c:?}\n  -> {:?}",
            refine_and_verify(&planes, c)
        )
        .unwrap();
    }
    s
}

/// `g - max(r, b)`, clamped at zero.
pub fn green_excess(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| p[1].saturating_sub(p[0].max(p[2])))
        .collect()
}

/// 1 for clearly green pixels: a clear excess, or a weak one where the pixel is much greener
/// than the mean colour of its `BLOCK` x `BLOCK` block.
fn green_mask(img: &RgbImage) -> Vec<u8> {
    let rgb = img.as_raw();
    let mut mask: Vec<u8> = rgb
        .chunks_exact(3)
        .map(|p| u8::from(p[1].saturating_sub(p[0].max(p[2])) >= GREEN_MIN))
        .collect();
    let weak = rgb
        .chunks_exact(3)
        .enumerate()
        .any(|(i, p)| mask[i] == 0 && p[1].saturating_sub(p[0].max(p[2])) >= WEAK_GREEN_MIN);
    if weak {
        add_relative_green(img, &mut mask);
    }
    mask
}

/// Pixels with a weak excess that are much greener than the mean colour of their block join
/// the mask (a thin line over a red or orange background).
fn add_relative_green(img: &RgbImage, mask: &mut [u8]) {
    let (w, h) = (img.width(), img.height());
    let rgb = img.as_raw();
    let (bw, bh) = (w.div_ceil(BLOCK), h.div_ceil(BLOCK));
    let mut sums = vec![[0u32; 4]; (bw * bh) as usize];
    for y in 0..h {
        for x in 0..w {
            let i = 3 * (y * w + x) as usize;
            let s = &mut sums[((y / BLOCK) * bw + x / BLOCK) as usize];
            s[0] += u32::from(rgb[i]);
            s[1] += u32::from(rgb[i + 1]);
            s[2] += u32::from(rgb[i + 2]);
            s[3] += 1;
        }
    }
    let means: Vec<[i32; 3]> = sums
        .iter()
        .map(|s| [0, 1, 2].map(|c| (s[c] / s[3].max(1)) as i32))
        .collect();
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            let p = &rgb[3 * i..3 * i + 3];
            if mask[i] != 0 || p[1].saturating_sub(p[0].max(p[2])) < WEAK_GREEN_MIN {
                continue;
            }
            let m = means[((y / BLOCK) * bw + x / BLOCK) as usize];
            let d = [0, 1, 2].map(|c| i32::from(p[c]) - m[c]);
            if d[1] - d[0].max(d[2]) >= SHIFT_MIN {
                mask[i] = 1;
            }
        }
    }
}

/// All rectangle outlines found in `img`, largest first.
pub fn detect(img: &RgbImage) -> Vec<Roi> {
    let planes = Planes::new(img);
    let green_pixels = planes.green.iter().filter(|&&g| g != 0).count();
    if green_pixels < (4 * MIN_SIDE) as usize {
        return Vec::new();
    }
    let (hruns, vruns) = straight_runs(&planes);
    let hbars = with_faint_extensions(&planes, group_runs(hruns), Side::Top);
    let vbars = with_faint_extensions(&planes, group_runs(vruns), Side::Left);
    let mut found: Vec<Roi> = assemble(&hbars, &vbars)
        .into_iter()
        .filter_map(|c| refine_and_verify(&planes, c))
        .collect();
    // Several bar combinations can describe one outline: keep the best-covered of each.
    found.sort_by(|a, b| b.confidence.partial_cmp(&a.confidence).unwrap());
    let mut kept: Vec<Roi> = Vec::new();
    for roi in found {
        if kept.iter().all(|k| k.bbox.iou(&roi.bbox) < 0.5) {
            kept.push(roi);
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
        let row = &p.green[(y * w) as usize..((y + 1) * w) as usize];
        let mut hstart = u32::MAX;
        let mut hlast = 0;
        for (x, &g) in row.iter().enumerate() {
            if g == 0 {
                continue;
            }
            let x = x as u32;
            if hstart != u32::MAX && x - hlast <= MAX_GAP + 1 {
                hlast = x;
            } else {
                if hstart != u32::MAX {
                    close(&mut hruns, y, hstart, hlast);
                }
                hstart = x;
                hlast = x;
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
        self.planes.green(x, y)
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
        (painted[0], *painted.last().unwrap())
    }
}

fn refine_and_verify(planes: &Planes, c: Candidate) -> Option<Roi> {
    let view = |side| SideView { planes, side };
    let (top, right, bottom, left) = (
        view(Side::Top),
        view(Side::Right),
        view(Side::Bottom),
        view(Side::Left),
    );
    let x0 = c.left.lo.min(c.top.start).min(c.bottom.start);
    let x1 = c.right.hi.max(c.top.end).max(c.bottom.end);
    let y0 = c.top.lo.min(c.left.start).min(c.right.start);
    let y1 = c.bottom.hi.max(c.left.end).max(c.right.end);
    if x1 - x0 + 1 < MIN_BOX_SIDE || y1 - y0 + 1 < MIN_BOX_SIDE {
        return None;
    }
    let coverage = [
        top.coverage(c.top.lo, c.top.hi, x0, x1),
        right.coverage(c.right.lo, c.right.hi, y0, y1),
        bottom.coverage(c.bottom.lo, c.bottom.hi, x0, x1),
        left.coverage(c.left.lo, c.left.hi, y0, y1),
    ];
    let min_coverage = coverage.iter().cloned().fold(f32::INFINITY, f32::min);
    if min_coverage < MIN_COVERAGE {
        return None;
    }
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
