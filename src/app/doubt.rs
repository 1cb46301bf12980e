//! How much the model doubts a record, for the review queue (active learning: an annotator sees
//! first the records whose correction teaches the model most). Two signals, each in [0, 1]:
//! the match score's closeness to the verify threshold (1 at the threshold, 0 at the far end of
//! the scale), and the disagreement of the predicted box with the record's box (1 - IoU against
//! the corrected box, else the detected one). The doubt is their mean, or the score's alone
//! when the record has no box to compare with.

use crate::data::store::Prediction;
use crate::eval::metrics::iou;

/// A predicted box whose IoU with the record's box is under this is "far from" it.
pub const FAR_IOU: f64 = 0.5;

/// What the list needs to know of a record's latest prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Predicted {
    pub verified: bool,
    /// The model failed on this record (unreadable image, ...): no box, no score.
    pub failed: bool,
    pub score: Option<f64>,
    /// IoU of the predicted box with the record's box, when both exist.
    pub iou: Option<f64>,
    /// See the module doc; `None` when the record failed.
    pub doubt: Option<f64>,
}

impl Predicted {
    /// `truth`: the record's corrected box, else its detected one.
    pub fn of(p: &Prediction, truth: Option<[f64; 4]>) -> Predicted {
        let overlap = match (p.coords, truth) {
            (Some(pred), Some(t)) => Some(iou(t, pred)),
            _ => None,
        };
        let doubt = match (p.match_score, p.threshold) {
            (Some(s), Some(t)) if p.ok() => Some(doubt(s, t, overlap)),
            _ => None,
        };
        Predicted {
            verified: p.verified,
            failed: !p.ok(),
            score: p.match_score,
            iou: overlap,
            doubt,
        }
    }

    /// The predicted box is far from the record's box (IoU under [`FAR_IOU`]).
    pub fn far(&self) -> bool {
        self.iou.is_some_and(|v| v < FAR_IOU)
    }
}

/// The doubt of a score against its threshold and of a box overlap; see the module doc.
pub fn doubt(score: f64, threshold: f64, overlap: Option<f64>) -> f64 {
    // The farthest a score can be from the threshold on [0, 1].
    let span = threshold.max(1.0 - threshold).max(f64::EPSILON);
    let near = (1.0 - (score - threshold).abs() / span).clamp(0.0, 1.0);
    match overlap {
        Some(v) => (near + (1.0 - v.clamp(0.0, 1.0))) / 2.0,
        None => near,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubt_is_highest_at_the_threshold_and_for_boxes_that_disagree() {
        assert_eq!(doubt(0.6, 0.6, None), 1.0);
        assert_eq!(doubt(0.0, 0.5, None), 0.0);
        assert!(doubt(0.55, 0.6, None) > doubt(0.9, 0.6, None));
        // Same score: the box that disagrees more is doubted more.
        assert!(doubt(0.9, 0.5, Some(0.1)) > doubt(0.9, 0.5, Some(0.8)));
        // Both signals at their worst and best.
        assert_eq!(doubt(0.5, 0.5, Some(0.0)), 1.0);
        assert_eq!(doubt(1.0, 0.5, Some(1.0)), 0.0);
    }
}
