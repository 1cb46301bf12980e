//! Four bars that close a rectangle, and the checks a drawn outline must pass: sides covered,
//! placed to the pixel, a real inside, and not a letter among letters.

use super::super::{PixelBox, Roi};
use super::bars::{Bar, END_TOLERANCE};
use super::corners::{drawn_corners, Bands, SMALL_UNEVEN};
use super::planes::Planes;
use super::sides::{Side, SideView};

/// Smallest accepted rectangle side, outline included: below this, glyphs such as a blocky
/// "D" or "0" in ultrasound annotations look like boxes.
const MIN_BOX_SIDE: u32 = 12;

/// Fraction of each side that must carry green.
const MIN_COVERAGE: f32 = 0.85;

/// The same where the box spans the sides' lines only (see `score`): such a box is taken only
/// when its sides are whole.
const MIN_COVERAGE_WITHIN_LINES: f32 = 0.95;

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
pub(super) const SMALL_BOX: u32 = 32;

/// Four bars that close a rectangle: `top`/`bottom` horizontal, `left`/`right` vertical.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    top: Bar,
    bottom: Bar,
    left: Bar,
    right: Bar,
}

pub(super) fn assemble(hbars: &[Bar], vbars: &[Bar]) -> Vec<Candidate> {
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

/// A candidate whose sides are all covered: its rough outer box (from the bars) and the
/// smallest side coverage, which is its confidence.
pub(super) struct Scored {
    candidate: Candidate,
    pub(super) rough: PixelBox,
    pub(super) coverage: f32,
}

/// Checks size and side coverage, the cheap tests, before any side is placed exactly. The
/// box spans the four bars; where that fails, it spans the sides' lines only, since a mark
/// touching a side (a label set against the box) lengthens that side's bar past the corner.
pub(super) fn score(planes: &Planes, c: Candidate) -> Option<Scored> {
    let spanning = [
        c.left.lo.min(c.top.start).min(c.bottom.start),
        c.top.lo.min(c.left.start).min(c.right.start),
        c.right.hi.max(c.top.end).max(c.bottom.end),
        c.bottom.hi.max(c.left.end).max(c.right.end),
    ];
    let lines = [c.left.lo, c.top.lo, c.right.hi, c.bottom.hi];
    let try_extent = |[x0, y0, x1, y1]: [u32; 4], min_coverage| {
        coverage_within(planes, &c, [x0, y0, x1, y1], min_coverage).map(|coverage| Scored {
            candidate: c,
            rough: PixelBox {
                x0,
                y0,
                x1: x1 + 1,
                y1: y1 + 1,
            },
            coverage,
        })
    };
    try_extent(spanning, MIN_COVERAGE).or_else(|| {
        (lines != spanning)
            .then(|| try_extent(lines, MIN_COVERAGE_WITHIN_LINES))
            .flatten()
    })
}

/// The smallest coverage of the four sides of `c` over the box `[x0, y0, x1, y1]` (inclusive),
/// if the box is large enough and every side covered at least `min_coverage`.
fn coverage_within(
    planes: &Planes,
    c: &Candidate,
    [x0, y0, x1, y1]: [u32; 4],
    min_coverage: f32,
) -> Option<f32> {
    if x1 < x0 + MIN_BOX_SIDE - 1 || y1 < y0 + MIN_BOX_SIDE - 1 {
        return None;
    }
    let view = |side| SideView { planes, side };
    let sides = [
        (Side::Top, c.top, x0, x1),
        (Side::Right, c.right, y0, y1),
        (Side::Bottom, c.bottom, x0, x1),
        (Side::Left, c.left, y0, y1),
    ];
    let mut coverage = f32::INFINITY;
    for (side, bar, a0, a1) in sides {
        coverage = coverage.min(view(side).coverage(bar.lo, bar.hi, a0, a1));
        if coverage < min_coverage {
            return None;
        }
    }
    Some(coverage)
}

/// Places each side of a covered candidate to the pixel.
pub(super) fn place_sides(planes: &Planes, scored: &Scored) -> Bands {
    let c = scored.candidate;
    let view = |side| SideView { planes, side };
    // Measure each side between the other two, clear of the corners.
    let (hx0, hx1) = (c.left.hi + 2, c.right.lo.saturating_sub(2));
    let (vy0, vy1) = (c.top.hi + 2, c.bottom.lo.saturating_sub(2));
    let refine_or_keep = |side, b: Bar, a0: u32, a1: u32| {
        if a1 > a0 {
            view(side).refine(b.lo, b.hi, a0, a1)
        } else {
            (b.lo, b.hi)
        }
    };
    Bands {
        top: refine_or_keep(Side::Top, c.top, hx0, hx1),
        right: refine_or_keep(Side::Right, c.right, vy0, vy1),
        bottom: refine_or_keep(Side::Bottom, c.bottom, hx0, hx1),
        left: refine_or_keep(Side::Left, c.left, vy0, vy1),
    }
}

/// Places each side of a covered candidate exactly and checks what a drawn box must be.
pub(super) fn refine_and_verify(planes: &Planes, scored: &Scored) -> Option<Roi> {
    let bands = place_sides(planes, scored);
    let ((t_lo, t_hi), (r_lo, r_hi), (b_lo, b_hi), (l_lo, l_hi)) =
        (bands.top, bands.right, bands.bottom, bands.left);
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
    if !drawn_corners(planes, &bands) || stem_beside_bowl(&scored.candidate, &bbox, &bands) {
        return None;
    }
    Some(Roi {
        bbox,
        confidence: Some(scored.coverage),
        line: Some(bands.widths()),
    })
}

/// A small outline of uneven sides (`SMALL_UNEVEN` or more) one of whose bars goes on past the box by
/// more than `END_TOLERANCE`: the bowl of a "b", "d" or "B", whose stem or upper bowl carries
/// a side past the corner. A pen's small box has even sides and a label set against it does
/// not thicken them.
fn stem_beside_bowl(c: &Candidate, bbox: &PixelBox, bands: &Bands) -> bool {
    let widths = bands.widths();
    let uneven =
        widths.iter().max().unwrap_or(&0) - widths.iter().min().unwrap_or(&0) >= SMALL_UNEVEN;
    let past = |bar: &Bar, lo: u32, hi: u32| {
        bar.start + END_TOLERANCE < lo || bar.end > hi + END_TOLERANCE
    };
    let small = bbox.width().max(bbox.height()) < SMALL_BOX;
    small
        && uneven
        && (past(&c.left, bbox.y0, bbox.y1 - 1)
            || past(&c.right, bbox.y0, bbox.y1 - 1)
            || past(&c.top, bbox.x0, bbox.x1 - 1)
            || past(&c.bottom, bbox.x0, bbox.x1 - 1))
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
