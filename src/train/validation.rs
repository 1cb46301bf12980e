//! Validation during a run: the raw loss of each task, the ROI head's mean IoU and the match
//! head's ROC AUC on (up to `val_examples` of) the project's val split, every
//! `validate_every` steps and at the end. The pairs are fixed for the whole run: each record
//! with its own image (a true pair) and with the image of a fixed other record whose answer
//! differs (a negative), so that one validation compares with the next.

use super::data::{build_sample, mismatched_partner, Example};
use super::replica::{LossSettings, Replica};
use crate::eval::metrics::{iou, roc_auc};
use crate::model::processor::ImageProcessorConfig;
use crate::model::tokenizer::QwenTokenizer;

/// Which validation number picks the `best` checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// The ROI head's mean IoU on true pairs (higher is better).
    RoiIou,
    /// The match head's ROC AUC (higher is better).
    MatchAuc,
    /// The sum of the three raw task losses (lower is better).
    Loss,
}

impl BestMetric {
    /// The metric's value in `v`, as "higher is better".
    pub fn score(self, v: &Validation) -> f64 {
        match self {
            BestMetric::RoiIou => v.roi_iou,
            BestMetric::MatchAuc => v.match_auc,
            BestMetric::Loss => -v.loss.iter().sum::<f64>(),
        }
    }
}

/// What one validation gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Raw loss per task (roi, match, lm), over all pairs.
    pub loss: [f64; 3],
    /// Mean IoU of the predicted box on true pairs with a box (NaN when there is none).
    pub roi_iou: f64,
    /// ROC AUC of the match probability, true pairs against negatives (NaN without both).
    pub match_auc: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// Records whose pairs could not be made into samples, and why.
    pub skipped: Vec<(i64, String)>,
}

/// The fixed validation pairs of a run.
pub struct ValidationSet {
    examples: Vec<Example>,
    /// `(text, image)` indices into `examples`, true pair and negative interleaved.
    pairs: Vec<(usize, usize)>,
}

impl ValidationSet {
    /// The first `limit` records of the val split (in the project's order) and their pairs.
    pub fn new(mut examples: Vec<Example>, limit: usize) -> Self {
        examples.truncate(limit);
        let n = examples.len();
        let mut pairs = Vec::with_capacity(2 * n);
        for i in 0..n {
            pairs.push((i, i));
            if let Some(j) = mismatched_partner(&examples, i) {
                pairs.push((i, j));
            }
        }
        ValidationSet { examples, pairs }
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Scores every pair with `replica`, `batch_size` pairs at a time. Each task's loss is its
    /// batches' losses weighted by what the loss is averaged over (boxes, pairs, answer tokens).
    pub fn run(
        &self,
        replica: &Replica,
        tokenizer: &QwenTokenizer,
        processor: &ImageProcessorConfig,
        batch_size: usize,
        settings: LossSettings,
    ) -> anyhow::Result<Validation> {
        let mut sums = [0f64; 3];
        let mut weights = [0f64; 3];
        let (mut scores, mut labels, mut ious) = (Vec::new(), Vec::new(), Vec::new());
        let mut skipped = Vec::new();
        for chunk in self.pairs.chunks(batch_size.max(1)) {
            let mut samples = Vec::with_capacity(chunk.len());
            for &(t, i) in chunk {
                match build_sample(&self.examples[t], &self.examples[i], tokenizer, processor) {
                    Ok(sample) => samples.push(sample),
                    Err(e) => skipped.push((self.examples[t].record_id, format!("{e:#}"))),
                }
            }
            if samples.is_empty() {
                continue;
            }
            let counts = super::data::Counts::of(&samples);
            let (losses, predictions) = replica.evaluate(&samples, settings)?;
            for (k, w) in [counts.roi_rows, counts.samples, counts.lm_targets]
                .into_iter()
                .enumerate()
            {
                if w > 0.0 {
                    sums[k] += losses[k] * w;
                    weights[k] += w;
                }
            }
            for (sample, p) in samples.iter().zip(&predictions) {
                scores.push(f64::from(p.match_probability));
                labels.push(!sample.negative);
                if let Some(truth) = sample.roi {
                    ious.push(iou(p.roi.map(f64::from), truth.map(f64::from)));
                }
            }
        }
        let loss = std::array::from_fn(|k| {
            if weights[k] > 0.0 {
                sums[k] / weights[k]
            } else {
                f64::NAN
            }
        });
        let roi_iou = if ious.is_empty() {
            f64::NAN
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        };
        Ok(Validation {
            loss,
            roi_iou,
            match_auc: roc_auc(&scores, &labels).unwrap_or(f64::NAN),
            pairs: scores.len(),
            skipped,
        })
    }
}
