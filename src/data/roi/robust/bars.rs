//! From green pixels to the straight bars that can be the sides of an outline: runs along
//! rows and columns, grouped across neighbouring lines, pieces merged, thin bars extended
//! through washed-out colour.

use super::planes::{Planes, GREEN_H, GREEN_V};
use super::sides::{Side, SideView};

/// Longest gap, in pixels, bridged inside one straight run.
const MAX_GAP: u32 = 2;

/// Shortest run kept for grouping; short pieces of a side broken by a crossing line still count.
const MIN_RUN: u32 = 3;

/// Longest gap between two pieces of one side (a crossing line, a dropout), in pixels, and as
/// a fraction of the pieces' joint length; the coverage check later bounds the total.
const MAX_BAR_GAP: u32 = 6;

const MAX_BAR_GAP_FRACTION: f32 = 0.15;

/// Shortest straight piece that can be a side.
pub(super) const MIN_SIDE: u32 = 8;

/// How far run ends may wander between neighbouring rows of one bar.
pub(super) const END_TOLERANCE: u32 = 3;

/// A straight run of green pixels: on line `pos` (a row for horizontal runs, a column for
/// vertical ones), from `start` to `end` inclusive.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pos: u32,
    start: u32,
    end: u32,
}

/// Several runs on consecutive lines with matching ends: one side of an outline, seen along
/// its length. `lo..=hi` is across the bar (its thickness), `start..=end` along it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bar {
    pub(super) lo: u32,
    pub(super) hi: u32,
    pub(super) start: u32,
    pub(super) end: u32,
}

impl Bar {
    pub(super) fn thickness(&self) -> u32 {
        self.hi - self.lo + 1
    }
    pub(super) fn length(&self) -> u32 {
        self.end - self.start + 1
    }
}

/// Horizontal and vertical runs of green at least `MIN_SIDE` long, in one raster pass.
pub(super) fn straight_runs(p: &Planes) -> (Vec<Run>, Vec<Run>) {
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
        // A row without green neither starts nor extends a run.
        if !p.row_has_green[y as usize] {
            continue;
        }
        let row = &p.green[(y * w) as usize..((y + 1) * w) as usize];
        let mut hstart = u32::MAX;
        let mut hlast = 0;
        let mut x = 0usize;
        while x < row.len() {
            // Most of a row is not green: skip 32, then 8 empty pixels at a time.
            if x + 32 <= row.len() && is_empty(&row[x..x + 32]) {
                x += 32;
                continue;
            }
            if x + 8 <= row.len() && is_empty(&row[x..x + 8]) {
                x += 8;
                continue;
            }
            let g = row[x];
            let xu = x;
            x += 1;
            if g == 0 {
                continue;
            }
            let x = xu as u32;
            if g & GREEN_H != 0 {
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
            if g & GREEN_V == 0 {
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

/// Whether `flags` (a multiple of 8 bytes) are all zero, read eight at a time.
#[inline(always)]
fn is_empty(flags: &[u8]) -> bool {
    flags.chunks_exact(8).fold(0u64, |acc, c| {
        acc | u64::from_ne_bytes(c.try_into().expect("8 bytes"))
    }) == 0
}

/// Groups runs (sorted by line, then start) into bars: a run continues a bar from the previous
/// line when both its ends are within `END_TOLERANCE` of that bar's last run.
pub(super) fn group_runs(runs: Vec<Run>) -> Vec<Bar> {
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
pub(super) fn with_faint_extensions(planes: &Planes, bars: Vec<Bar>, side: Side) -> Vec<Bar> {
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
