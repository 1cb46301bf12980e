//! The browser's list as shown: the rows that pass the filters, in the chosen order, with the
//! counts by status. Computed off the frame and cached: it changes only when the filters, the
//! order or a row's listed contents change, and for a large project (over
//! [`View::inline_limit`] rows) it is computed on a worker thread while the last list stays on
//! screen. The full order for a sort is kept apart from the filtering, so typing a search only
//! filters (one pass over the rows) and does not sort 160,000 rows again.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

use super::browser::{Filters, Row, SortBy};
use crate::data::store::ReviewStatus;

/// The rows as the workbench holds them: shared, so a worker can read a snapshot while the UI
/// replaces the one row an edit changed.
pub type Rows = Vec<Arc<Row>>;

/// What the list was computed for.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    filters: Filters,
    sort: SortBy,
    /// [`super::Workbench::rows_generation`]: bumped when rows are replaced or change.
    rows: u64,
}

/// One computed list.
struct Computed {
    key: Key,
    order: Vec<usize>,
    counts: [usize; 4],
    /// Every row in the sort's order (ties by id), for the next filter change.
    sorted: Arc<Vec<u32>>,
}

struct Pending {
    key: Key,
    rx: Receiver<Option<Computed>>,
}

/// The cached list; see the module doc.
pub struct View {
    order: Vec<usize>,
    counts: [usize; 4],
    key: Option<Key>,
    /// The full order for (sort, rows generation).
    sorted: Option<(SortBy, u64, Arc<Vec<u32>>)>,
    pending: Option<Pending>,
    /// Bumped for each new job; a worker whose job is no longer the latest stops early.
    latest: Arc<AtomicU64>,
    /// Projects up to this many rows compute their list in the frame (a few milliseconds).
    pub inline_limit: usize,
}

impl Default for View {
    fn default() -> Self {
        View {
            order: Vec::new(),
            counts: [0; 4],
            key: None,
            sorted: None,
            pending: None,
            latest: Arc::new(AtomicU64::new(0)),
            inline_limit: 5_000,
        }
    }
}

/// What [`View::refresh`] did this frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Nothing new.
    Same,
    /// A new list for changed rows (an edit): same filters and order.
    Rows,
    /// A new list for new filters or a new order: the caller brings the selection into view.
    Filters,
}

impl View {
    /// Indices into the rows, filtered and sorted (the last list computed; see [`View::busy`]).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Records by status over the whole project, in [`ReviewStatus::ALL`] order.
    pub fn counts(&self) -> [usize; 4] {
        self.counts
    }

    /// Whether a newer list is being computed (the one shown is for older filters or rows).
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the list shown is for exactly these filters, order and rows.
    pub fn is_current(&self, filters: &Filters, sort: SortBy, rows: u64) -> bool {
        self.pending.is_none()
            && self
                .key
                .as_ref()
                .is_some_and(|k| k.filters == *filters && k.sort == sort && k.rows == rows)
    }

    /// Forgets the list (the rows were replaced: its indices mean nothing now).
    pub fn clear(&mut self) {
        self.order.clear();
        self.counts = [0; 4];
        self.key = None;
        self.sorted = None;
        self.pending = None;
        self.latest.fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// Brings the list up to date: takes a finished worker's list, and starts a new computation
    /// when the filters, order or rows differ from the last one asked for. `repaint` is asked
    /// for when a worker finishes.
    pub fn refresh(
        &mut self,
        rows: &Rows,
        generation: u64,
        filters: &Filters,
        sort: SortBy,
        repaint: Option<&egui::Context>,
    ) -> Refreshed {
        let mut result = Refreshed::Same;
        if let Some(p) = &self.pending {
            match p.rx.try_recv() {
                Ok(Some(c)) => {
                    self.pending = None;
                    result = self.take(c);
                }
                Ok(None) | Err(TryRecvError::Disconnected) => self.pending = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        let key = Key {
            filters: filters.clone(),
            sort,
            rows: generation,
        };
        let asked = self.pending.as_ref().map(|p| &p.key).or(self.key.as_ref());
        if asked == Some(&key) {
            return result;
        }
        let job = self.latest.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        let sorted = self
            .sorted
            .as_ref()
            .filter(|(s, g, _)| *s == sort && *g == generation)
            .map(|(_, _, v)| v.clone());
        if rows.len() <= self.inline_limit {
            self.pending = None;
            if let Some(c) = compute(key, rows, sorted, None) {
                return self.take(c).max(result);
            }
            return result;
        }
        let (tx, rx) = channel();
        let snapshot = rows.clone();
        let latest = self.latest.clone();
        let ctx = repaint.cloned();
        let worker_key = key.clone();
        let spawned = std::thread::Builder::new()
            .name("roiscope-list".into())
            .spawn(move || {
                let c = compute(worker_key, &snapshot, sorted, Some((&latest, job)));
                // The receiver is gone when a newer job replaced this one.
                let _ = tx.send(c);
                if let Some(ctx) = ctx {
                    ctx.request_repaint();
                }
            });
        match spawned {
            Ok(_) => self.pending = Some(Pending { key, rx }),
            // No thread to be had: compute in the frame rather than show a stale list.
            Err(_) => {
                if let Some(c) = compute(key, rows, None, None) {
                    return self.take(c).max(result);
                }
            }
        }
        result
    }

    fn take(&mut self, c: Computed) -> Refreshed {
        let kind = match &self.key {
            Some(k) if k.filters == c.key.filters && k.sort == c.key.sort => {
                if k.rows == c.key.rows {
                    Refreshed::Same
                } else {
                    Refreshed::Rows
                }
            }
            _ => Refreshed::Filters,
        };
        self.order = c.order;
        self.counts = c.counts;
        self.sorted = Some((c.key.sort, c.key.rows, c.sorted));
        self.key = Some(c.key);
        kind
    }
}

impl PartialOrd for Refreshed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Refreshed {
    fn cmp(&self, other: &Self) -> Ordering {
        let rank = |r: &Refreshed| match r {
            Refreshed::Same => 0,
            Refreshed::Rows => 1,
            Refreshed::Filters => 2,
        };
        rank(self).cmp(&rank(other))
    }
}

/// The list for `key`; `None` when `cancel` says a newer job replaced this one.
fn compute(
    key: Key,
    rows: &Rows,
    sorted: Option<Arc<Vec<u32>>>,
    cancel: Option<(&AtomicU64, u64)>,
) -> Option<Computed> {
    let cancelled =
        || cancel.is_some_and(|(latest, job)| latest.load(AtomicOrdering::Relaxed) != job);
    let sorted = match sorted {
        Some(s) if s.len() == rows.len() => s,
        _ => Arc::new(sort_all(rows, key.sort)),
    };
    if cancelled() {
        return None;
    }
    let words = key.filters.words();
    let mut order = Vec::new();
    let mut counts = [0usize; 4];
    for (n, &i) in sorted.iter().enumerate() {
        if n % 8192 == 8191 && cancelled() {
            return None;
        }
        let row = &rows[i as usize];
        if let Some(s) = ReviewStatus::ALL.iter().position(|s| *s == row.status) {
            counts[s] += 1;
        }
        if key.filters.matches_words(row, &words) {
            order.push(i as usize);
        }
    }
    Some(Computed {
        key,
        order,
        counts,
        sorted,
    })
}

/// Every row's index in `sort`'s order; ties keep id order (the rows are in id order).
pub fn sort_all(rows: &Rows, sort: SortBy) -> Vec<u32> {
    let mut v: Vec<u32> = (0..rows.len() as u32).collect();
    let row = |i: &u32| &rows[*i as usize];
    match sort {
        SortBy::Id => {}
        SortBy::Image => v.sort_by(|a, b| natural_cmp(&row(a).image, &row(b).image)),
        SortBy::Status => {
            v.sort_by_key(|i| ReviewStatus::ALL.iter().position(|s| *s == row(i).status))
        }
        SortBy::Diagnosis => v.sort_by(|a, b| natural_cmp(&row(a).diagnosis, &row(b).diagnosis)),
        SortBy::Doubt => {
            // Most doubted first; no prediction (or a failed one) last. Stable: ties by id.
            let key = |i: &u32| row(i).predicted.and_then(|p| p.doubt);
            v.sort_by(|a, b| match (key(a), key(b)) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
        }
    }
    v
}

/// Text order where runs of digits compare as numbers ("finding 4102" before "finding 41029",
/// "img_9" before "img_10") and letters regardless of case; ties then by the plain text, so the
/// order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (n, m) = (run(x), run(y));
                let strip = |s: &'_ [u8]| -> usize { s.iter().take_while(|c| **c == b'0').count() };
                let (dx, dy) = (&x[..n], &y[..m]);
                let (vx, vy) = (&dx[strip(dx)..], &dy[strip(dy)..]);
                let by_value = vx.len().cmp(&vy.len()).then_with(|| vx.cmp(vy));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                x = &x[n..];
                y = &y[m..];
            }
            (Some(_), Some(_)) => {
                // One character each (UTF-8 aware), compared without case.
                let cx = std::str::from_utf8(x).ok().and_then(|s| s.chars().next());
                let cy = std::str::from_utf8(y).ok().and_then(|s| s.chars().next());
                let (Some(cx), Some(cy)) = (cx, cy) else {
                    return a.cmp(b);
                };
                let ord = cx.to_lowercase().cmp(cy.to_lowercase());
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[cx.len_utf8()..];
                y = &y[cy.len_utf8()..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_text_compare_by_value() {
        let mut v = vec![
            "finding 41029",
            "finding 4102",
            "Finding 5",
            "finding 10: cyst",
            "finding 9: cyst",
            "img_010",
            "img_9",
            "",
            "alpha",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "",
                "alpha",
                "Finding 5",
                "finding 9: cyst",
                "finding 10: cyst",
                "finding 4102",
                "finding 41029",
                "img_9",
                "img_010",
            ]
        );
        // Plain text order would put "finding 41029:" before "finding 4102:".
        assert_eq!(
            natural_cmp("finding 4102: x", "finding 41029: x"),
            Ordering::Less
        );
        // Total: equal only when the texts are.
        assert_eq!(natural_cmp("a1", "A1"), "a1".cmp("A1"));
        assert_eq!(natural_cmp("x01", "x1"), "x01".cmp("x1"));
        assert_eq!(natural_cmp("é2", "é10"), Ordering::Less);
    }
}
