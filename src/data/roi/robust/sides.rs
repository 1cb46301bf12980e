//! One side of a candidate rectangle, seen along and across: how much of it carries green,
//! and exactly which lines are painted.

use super::planes::Planes;

/// A weak excess that still counts along a thin ridge (see `SideView::ridge_green`).
const WEAK_GREEN_MIN: u8 = 6;

/// How much greener a faint line must be than the pixels two steps to either side.
const RIDGE_MIN: i32 = 4;

/// Luminance step (in grey levels) below which a side's rows are not told apart by brightness.
const MIN_CONTRAST: u32 = 12;

/// Which side of the rectangle a band belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Top,
    Right,
    Bottom,
    Left,
}

impl Side {
    pub(super) fn horizontal(self) -> bool {
        matches!(self, Side::Top | Side::Bottom)
    }
}

/// Reads the planes with coordinates along and across one side.
pub(super) struct SideView<'a> {
    pub(super) planes: &'a Planes<'a>,
    pub(super) side: Side,
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
    pub(super) fn ridge_green(&self, along: u32, across: u32) -> bool {
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
    pub(super) fn coverage(&self, lo: u32, hi: u32, a0: u32, a1: u32) -> f32 {
        let n = (a0..=a1)
            .filter(|&a| (lo..=hi).any(|c| self.ridge_green(a, c)))
            .count();
        n as f32 / (a1 - a0 + 1) as f32
    }

    /// Luminance along line `across` at the given positions.
    fn luma_along(&self, across: u32, positions: &[u32]) -> Vec<i32> {
        positions.iter().map(|&a| self.luma(a, across)).collect()
    }

    /// Median over positions of |luma(line) - luma(reference line)|, from both lines' values
    /// at the same positions; `d` is scratch space.
    fn median_step(line: &[i32], reference: &[i32], d: &mut Vec<u32>) -> u32 {
        d.clear();
        d.extend(line.iter().zip(reference).map(|(&l, &r)| l.abs_diff(r)));
        let mid = d.len() / 2;
        *d.select_nth_unstable(mid).1
    }

    /// Places the painted lines of this side exactly. `lo..=hi` is the band found by colour;
    /// positions `[a0, a1]` run along the side, clear of the corners.
    pub(super) fn refine(&self, lo: u32, hi: u32, a0: u32, a1: u32) -> (u32, u32) {
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
        let ref_lumas: Vec<Vec<i32>> = refs
            .iter()
            .map(|&r| self.luma_along(r, &positions))
            .collect();
        let mut scratch = Vec::with_capacity(positions.len());
        let steps: Vec<u32> = (lo..=hi)
            .map(|line| {
                let line_luma = self.luma_along(line, &positions);
                ref_lumas
                    .iter()
                    .map(|r| Self::median_step(&line_luma, r, &mut scratch))
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
