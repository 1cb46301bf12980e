//! Thinning long curves for drawing. A plot a few hundred pixels wide cannot show 10,000 points
//! per curve, but tessellating them all costs the frame; what the eye needs is, per pixel column,
//! the lowest and the highest value. Over the visible x range a curve keeps at most those two
//! points per bucket (a bucket about a pixel wide); outside it, a few coarse buckets keep the
//! curve's extent so that resetting the view still fits the whole run. No spike is lost: the
//! extremes of every bucket stay, in step order.

/// Buckets on each side of the visible range.
const OUTSIDE_BUCKETS: usize = 32;

/// Thins `points` (sorted by x) to at most two per bucket: `buckets` over `visible` (the plot's
/// x range last frame; the whole curve when `None`) and a few coarse ones on either side.
pub fn thin(points: &[[f64; 2]], visible: Option<(f64, f64)>, buckets: usize) -> Vec<[f64; 2]> {
    let buckets = buckets.max(1);
    if points.len() <= 2 * buckets {
        return points.to_vec();
    }
    let (lo, hi) = visible.unwrap_or((points[0][0], points[points.len() - 1][0]));
    let start = points.partition_point(|p| p[0] < lo);
    let end = points.partition_point(|p| p[0] <= hi).max(start);
    let mut out = Vec::with_capacity(2 * (buckets + 2 * OUTSIDE_BUCKETS) + 6);
    extremes(&points[..start], OUTSIDE_BUCKETS, &mut out);
    extremes(&points[start..end], buckets, &mut out);
    extremes(&points[end..], OUTSIDE_BUCKETS, &mut out);
    out
}

/// Appends the first and last point of `seg` and, per bucket of equal x width, the points with
/// the lowest and the highest y, in x order.
fn extremes(seg: &[[f64; 2]], buckets: usize, out: &mut Vec<[f64; 2]>) {
    if seg.len() <= 2 * buckets + 2 {
        out.extend_from_slice(seg);
        return;
    }
    let (x0, x1) = (seg[0][0], seg[seg.len() - 1][0]);
    let width = (x1 - x0) / buckets as f64;
    let bucket_of = |x: f64| {
        if width > 0.0 {
            (((x - x0) / width) as usize).min(buckets - 1)
        } else {
            0
        }
    };
    out.push(seg[0]);
    let mut i = 1;
    let last = seg.len() - 1;
    while i < last {
        let b = bucket_of(seg[i][0]);
        let (mut lo, mut hi) = (i, i);
        let mut j = i + 1;
        while j < last && bucket_of(seg[j][0]) == b {
            if seg[j][1] < seg[lo][1] {
                lo = j;
            }
            if seg[j][1] > seg[hi][1] {
                hi = j;
            }
            j += 1;
        }
        out.push(seg[lo.min(hi)]);
        if lo != hi {
            out.push(seg[lo.max(hi)]);
        }
        i = j;
    }
    out.push(seg[last]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(n: usize) -> Vec<[f64; 2]> {
        (0..n)
            .map(|i| [i as f64, ((i * 7919) % 1000) as f64])
            .collect()
    }

    #[test]
    fn short_curves_are_kept_whole() {
        let c = curve(100);
        assert_eq!(thin(&c, None, 400), c);
    }

    #[test]
    fn a_long_curve_keeps_its_ends_and_every_bucket_extreme() {
        let mut c = curve(10_000);
        c[5_000][1] = 1e6; // one spike
        c[7_321][1] = -1e6;
        let t = thin(&c, None, 500);
        assert!(t.len() <= 2 * 500 + 2, "{} points", t.len());
        assert_eq!(t.first(), c.first());
        assert_eq!(t.last(), c.last());
        assert!(t.contains(&c[5_000]) && t.contains(&c[7_321]));
        assert!(t.windows(2).all(|w| w[0][0] < w[1][0]), "x order kept");
        // Every kept point is a real point of the curve.
        assert!(t.iter().all(|p| c[p[0] as usize] == *p));
    }

    #[test]
    fn the_visible_range_gets_the_detail_and_the_rest_keeps_the_extent() {
        let c = curve(10_000);
        let t = thin(&c, Some((4_000.0, 4_200.0)), 500);
        // All 201 visible points fit in 500 buckets: all kept.
        assert!(c[4_000..=4_200].iter().all(|p| t.contains(p)));
        assert_eq!(t.first(), c.first());
        assert_eq!(t.last(), c.last());
        assert!(
            t.len() <= 201 + 2 * (2 * OUTSIDE_BUCKETS + 2),
            "{} points",
            t.len()
        );
    }
}
