//! Evaluation of a checkpoint on a project split, and calibration of the verify threshold.
//!
//! For every record the pipeline runs as `roiscope infer` does (locate -> diagnose -> verify),
//! and the match head also scores the record's own diagnosis (a true pair) and the diagnosis of
//! another record that says something else (a mismatched pair): those two give the match ROC,
//! AUC, the error rates at the threshold and the calibration.
//!
//! - [`evaluate`]: one evaluation from the split to the written report (the command's and the
//!   window's);
//! - [`metrics`]: the metrics themselves, checked against scikit-learn, rouge-score and NLTK;
//! - [`report`]: `report.json` and the self-contained `report.html`.

pub mod compare;
pub mod evaluate;
pub mod metrics;
pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::data::image_io::{self, LoadOptions};
use crate::infer::{box_to_px, Pipeline};
use crate::train::data::{mismatched_partner, Example};
use metrics::{bleu4, exact_match, iou, mean, rates_at, roc_auc, roc_curve, rouge_l, Rates, Roc};

/// A released diagnosis counts as correct when it equals the reference (categorical labels) or,
/// for free text, when its ROUGE-L F1 against the reference reaches this.
pub const CORRECT_ROUGE_L: f64 = 0.5;

/// Everything measured on one record.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub record_id: i64,
    pub image: PathBuf,
    pub reference: String,
    /// Ground truth and predicted boxes, normalised `x1, y1, x2, y2`.
    pub truth: Option<[f64; 4]>,
    pub predicted: Option<[f64; 4]>,
    pub box_px: Option<[u32; 4]>,
    pub iou: Option<f64>,
    pub generated: Option<String>,
    /// Match probability of (image, generated diagnosis).
    pub generated_score: Option<f64>,
    /// Match probability of (image, its own diagnosis) and of (image, another record's).
    pub true_pair_score: Option<f64>,
    pub mismatched_pair_score: Option<f64>,
    /// The record whose diagnosis made the mismatched pair.
    pub mismatched_record_id: Option<i64>,
    pub rouge_l: Option<f64>,
    pub bleu4: Option<f64>,
    pub exact: Option<bool>,
    /// Filled in once the threshold is known.
    pub released: Option<bool>,
    pub correct: Option<bool>,
    pub seconds: f64,
    pub error: Option<String>,
}

/// Runs the pipeline on one example.
fn evaluate_one(pipeline: &Pipeline, examples: &[Example], i: usize) -> Case {
    let ex = &examples[i];
    let started = Instant::now();
    let mut case = Case {
        record_id: ex.record_id,
        image: ex.image.clone(),
        reference: ex.answer.clone(),
        truth: ex.roi.map(|b| b.map(f64::from)),
        predicted: None,
        box_px: None,
        iou: None,
        generated: None,
        generated_score: None,
        true_pair_score: None,
        mismatched_pair_score: None,
        mismatched_record_id: None,
        rouge_l: None,
        bleu4: None,
        exact: None,
        released: None,
        correct: None,
        seconds: 0.0,
        error: None,
    };
    let result = (|| -> anyhow::Result<()> {
        let img = image_io::load_rgb8(&ex.image, LoadOptions::default())
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ex.image.display()))?;
        let outcome = pipeline.run(&img, &ex.question)?;
        let predicted = outcome.roi.map(f64::from);
        case.predicted = Some(predicted);
        case.box_px = Some(box_to_px(outcome.roi, img.width(), img.height()));
        case.iou = case.truth.map(|t| iou(t, predicted));
        case.generated_score = Some(f64::from(outcome.match_score));
        case.rouge_l = Some(rouge_l(&ex.answer, &outcome.generated));
        case.bleu4 = Some(bleu4(&ex.answer, &outcome.generated));
        case.exact = Some(exact_match(&ex.answer, &outcome.generated));
        case.generated = Some(outcome.generated);
        let processed = pipeline.process(&img)?;
        let mut texts = vec![ex.answer.as_str()];
        let partner = mismatched_partner(examples, i);
        if let Some(j) = partner {
            texts.push(examples[j].answer.as_str());
            case.mismatched_record_id = Some(examples[j].record_id);
        }
        let scores = pipeline.score_pairs(&processed, &ex.question, &texts)?;
        case.true_pair_score = Some(f64::from(scores[0].match_score));
        case.mismatched_pair_score = scores.get(1).map(|s| f64::from(s.match_score));
        Ok(())
    })();
    if let Err(e) = result {
        case.error = Some(format!("{e:#}"));
    }
    case.seconds = started.elapsed().as_secs_f64();
    case
}

/// The summary of a split.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub records: usize,
    pub errors: usize,
    pub roi: RoiSummary,
    pub matching: MatchSummary,
    pub text: TextSummary,
    pub gate: GateSummary,
    pub seconds: f64,
    pub images_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoiSummary {
    /// Records with a ground-truth box and a prediction.
    pub scored: usize,
    pub mean_iou: Option<f64>,
    /// Share of them with IoU >= 0.5.
    pub iou_at_0_5: Option<f64>,
    /// 10 bins over [0, 1].
    pub histogram: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatchSummary {
    pub positives: usize,
    pub negatives: usize,
    pub auc: Option<f64>,
    pub threshold: f64,
    #[serde(flatten)]
    pub rates: Rates,
    pub roc: Option<Roc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextSummary {
    pub scored: usize,
    /// Means over records, in [0, 1] (LLaMA-Factory prints them times 100).
    pub rouge_l: Option<f64>,
    pub bleu4: Option<f64>,
    pub exact_match: Option<f64>,
    /// Whether the diagnosis looks categorical (its values repeat: at most half as many distinct
    /// values as records); exact match is the meaningful score then.
    pub categorical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GateSummary {
    pub threshold: f64,
    /// Released diagnoses over diagnoses generated.
    pub coverage: Option<f64>,
    pub released: usize,
    /// Correct among the released, and among the withheld.
    pub released_accuracy: Option<f64>,
    pub withheld_accuracy: Option<f64>,
    /// What "correct" means here.
    pub correct_means: String,
}

/// The true and mismatched pair scores as (scores, labels).
pub fn pair_scores(cases: &[Case]) -> (Vec<f64>, Vec<bool>) {
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    for c in cases {
        if let Some(s) = c.true_pair_score {
            scores.push(s);
            labels.push(true);
        }
        if let Some(s) = c.mismatched_pair_score {
            scores.push(s);
            labels.push(false);
        }
    }
    (scores, labels)
}

/// Runs every example, calling `progress(done, total)` after each.
pub fn run_cases(
    pipeline: &Pipeline,
    examples: &[Example],
    progress: impl FnMut(usize, usize),
) -> Vec<Case> {
    run_cases_until(pipeline, examples, progress, || false)
}

/// [`run_cases`], stopping before the next example once `stop()` says so (the cases so far).
pub fn run_cases_until(
    pipeline: &Pipeline,
    examples: &[Example],
    mut progress: impl FnMut(usize, usize),
    stop: impl Fn() -> bool,
) -> Vec<Case> {
    let mut cases = Vec::with_capacity(examples.len());
    for i in 0..examples.len() {
        if stop() {
            break;
        }
        cases.push(evaluate_one(pipeline, examples, i));
        progress(i + 1, examples.len());
    }
    cases
}

/// Applies `threshold` to the cases (release and correctness) and summarises them.
pub fn summarise(cases: &mut [Case], threshold: f64, seconds: f64) -> Summary {
    let distinct: std::collections::HashSet<String> = cases
        .iter()
        .map(|c| metrics::normalise_label(&c.reference))
        .collect();
    let categorical = !cases.is_empty() && distinct.len() * 2 <= cases.len();
    for c in cases.iter_mut() {
        if let Some(s) = c.generated_score {
            c.released = Some(s >= threshold);
            c.correct = Some(if categorical {
                c.exact == Some(true)
            } else {
                c.rouge_l.unwrap_or(0.0) >= CORRECT_ROUGE_L
            });
        }
    }
    let ious: Vec<f64> = cases.iter().filter_map(|c| c.iou).collect();
    let (scores, labels) = pair_scores(cases);
    let collect = |f: fn(&Case) -> Option<f64>| cases.iter().filter_map(f).collect::<Vec<_>>();
    let rouge = collect(|c| c.rouge_l);
    let bleu = collect(|c| c.bleu4);
    let exact = collect(|c| c.exact.map(|e| if e { 1.0 } else { 0.0 }));
    let accuracy = |released: bool| {
        let v: Vec<f64> = cases
            .iter()
            .filter(|c| c.released == Some(released))
            .map(|c| if c.correct == Some(true) { 1.0 } else { 0.0 })
            .collect();
        mean(&v)
    };
    let generated = cases.iter().filter(|c| c.released.is_some()).count();
    let released = cases.iter().filter(|c| c.released == Some(true)).count();
    let records = cases.len();
    Summary {
        records,
        errors: cases.iter().filter(|c| c.error.is_some()).count(),
        roi: RoiSummary {
            scored: ious.len(),
            mean_iou: mean(&ious),
            iou_at_0_5: mean(
                &ious
                    .iter()
                    .map(|&v| f64::from(u8::from(v >= 0.5)))
                    .collect::<Vec<_>>(),
            ),
            histogram: metrics::histogram01(&ious, 10),
        },
        matching: MatchSummary {
            positives: labels.iter().filter(|&&l| l).count(),
            negatives: labels.iter().filter(|&&l| !l).count(),
            auc: roc_auc(&scores, &labels),
            threshold,
            rates: rates_at(&scores, &labels, threshold),
            roc: roc_curve(&scores, &labels),
        },
        text: TextSummary {
            scored: rouge.len(),
            rouge_l: mean(&rouge),
            bleu4: mean(&bleu),
            exact_match: mean(&exact),
            categorical,
        },
        gate: GateSummary {
            threshold,
            coverage: (generated > 0).then(|| released as f64 / generated as f64),
            released,
            released_accuracy: accuracy(true),
            withheld_accuracy: accuracy(false),
            correct_means: if categorical {
                "exact match with the reference label".into()
            } else {
                format!("ROUGE-L F1 against the reference >= {CORRECT_ROUGE_L}")
            },
        },
        seconds,
        images_per_second: if seconds > 0.0 {
            records as f64 / seconds
        } else {
            0.0
        },
    }
}
