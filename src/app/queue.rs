//! The review queue: N, and after each review action in queue mode, the next unreviewed record.
//! In id order over the whole project; when the list is sorted by model doubt, in the list's
//! order (its filters too), so the annotator sees the records the model doubts most first.

use super::browser::SortBy;
use super::Workbench;
use crate::data::store::ReviewStatus;

impl Workbench {
    /// Selects the next unreviewed record after the current one, wrapping round.
    pub(super) fn next_unreviewed(&mut self) {
        let by_doubt = self.browser.sort == SortBy::Doubt;
        let order: Vec<usize> = if by_doubt {
            self.browser.view.order().to_vec()
        } else {
            (0..self.rows.len()).collect()
        };
        let start = self
            .current
            .and_then(|c| order.iter().position(|&v| v == c))
            .map_or(0, |p| p + 1);
        let n = order.len();
        let found = (0..n)
            .map(|k| order[(start + k) % n])
            .find(|&i| self.rows[i].status == ReviewStatus::Unreviewed && Some(i) != self.current);
        match found {
            Some(i) => {
                self.select(i);
                self.browser.scroll_to = Some(i);
            }
            None if by_doubt => {
                self.message = Some(("every record the list shows is reviewed".into(), false))
            }
            None => self.message = Some(("every record is reviewed".into(), false)),
        }
    }
}
