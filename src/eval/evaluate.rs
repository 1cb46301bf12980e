//! One evaluation from start to report: open the project's split and the pipeline, run every
//! record, calibrate the threshold when asked, summarise and write `report.json` and
//! `report.html`. `roiscope eval` and the workbench's Evaluate both call [`evaluate`]; they only
//! differ in how they show progress and the result.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use serde_json::json;

use super::{metrics, pair_scores, report, run_cases_until, summarise, Summary};
use crate::data::store::{Project, Split};
use crate::infer::{write_calibration, Calibration, Pipeline, ThresholdSource};
use crate::model::quantized::WeightFormat;
use crate::train::data::load_examples_with_meanings;

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    pub project: PathBuf,
    pub model: PathBuf,
    /// A run folder (its latest checkpoint) or a checkpoint folder.
    pub adapter: PathBuf,
    pub split: Split,
    /// Where the report goes (default: RUN_DIR/eval-<split>).
    pub out: Option<PathBuf>,
    /// Calibrate the threshold for this sensitivity and store it in the run.
    pub calibrate: Option<f64>,
    /// Report with this threshold (default: the run's calibration, else 0.5).
    pub threshold: Option<f64>,
    pub max_new_tokens: usize,
    /// At most this many records of the split (0: all).
    pub limit: usize,
    pub weights: WeightFormat,
}

/// What an evaluation produced.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub summary: Summary,
    pub threshold: f64,
    pub calibration: Option<(Calibration, PathBuf)>,
    pub json_path: PathBuf,
    pub html_path: PathBuf,
    /// The weights as loaded, in words.
    pub weights: String,
    /// Things the reader should know (a calibration made on another checkpoint).
    pub warnings: Vec<String>,
    /// How the mismatched pairs were chosen ([`crate::train::meaning::Meanings::describe`]).
    pub mismatch_rule: String,
}

/// Runs the evaluation; `progress(done, total)` after each record. Setting `cancel` stops it
/// before the next record, and nothing is written.
pub fn evaluate(
    req: &EvalRequest,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
    cancel: &AtomicBool,
) -> anyhow::Result<Evaluation> {
    if let Some(s) = req.calibrate {
        anyhow::ensure!(
            s > 0.0 && s <= 1.0,
            "the target sensitivity must be in (0, 1], not {s}"
        );
    }
    let project = Project::open(&req.project)?;
    let (mut examples, meanings) = load_examples_with_meanings(&project, req.split)?;
    anyhow::ensure!(
        !examples.is_empty(),
        "the {} split of {} is empty",
        req.split.as_str(),
        req.project.display()
    );
    if req.limit > 0 {
        examples.truncate(req.limit);
    }
    let threshold = if req.calibrate.is_some() {
        None
    } else {
        req.threshold
    };
    let mut pipeline = Pipeline::open_in(&req.model, &req.adapter, threshold, req.weights, device)?;
    pipeline.max_new_tokens = req.max_new_tokens;
    let out = req.out.clone().unwrap_or_else(|| {
        pipeline
            .checkpoint
            .run
            .join(format!("eval-{}", req.split.as_str()))
    });
    let started = Instant::now();
    let mut cases = run_cases_until(&pipeline, &examples, &mut progress, || {
        cancel.load(Ordering::Relaxed)
    });
    anyhow::ensure!(
        !cancel.load(Ordering::Relaxed),
        "evaluation cancelled after {} of {} records; no report written",
        cases.len(),
        examples.len()
    );
    let seconds = started.elapsed().as_secs_f64();
    let mut threshold = pipeline.threshold;
    let mut threshold_source = serde_json::to_value(&pipeline.threshold_source)?;
    let mut calibration = None;
    let mut warnings = Vec::new();
    if let Some(target) = req.calibrate {
        let (scores, labels) = pair_scores(&cases);
        let t = metrics::threshold_for_sensitivity(&scores, &labels, target)
            .context("no true pair was scored: nothing to calibrate on")?;
        let rates = metrics::rates_at(&scores, &labels, t);
        let cal = Calibration {
            threshold: t,
            target_sensitivity: target,
            sensitivity: 1.0 - rates.false_negative_rate.unwrap_or(1.0),
            false_positive_rate: rates.false_positive_rate,
            split: req.split.as_str().into(),
            positives: labels.iter().filter(|&&l| l).count(),
            negatives: labels.iter().filter(|&&l| !l).count(),
            checkpoint: pipeline.checkpoint.name(),
        };
        let file = write_calibration(&pipeline.checkpoint, &cal)?;
        threshold = t;
        threshold_source = json!({"source": "calibrated_now", "file": file});
        calibration = Some((cal, file));
    } else if let ThresholdSource::Calibrated { checkpoint, .. } = &pipeline.threshold_source {
        if *checkpoint != pipeline.checkpoint.name() {
            warnings.push(format!(
                "the run's calibration was made on {checkpoint}, this is {}",
                pipeline.checkpoint.name()
            ));
        }
    }
    let summary = summarise(&mut cases, threshold, seconds);
    let meta = json!({
        "model": req.model.display().to_string(),
        "checkpoint": pipeline.checkpoint.dir.display().to_string(),
        "project": req.project.display().to_string(),
        "split": req.split.as_str(),
        "heads_layout": pipeline.heads.layout,
        "threshold_source": threshold_source,
        "calibration": calibration.as_ref().map(|(c, _)| c),
        "max_new_tokens": req.max_new_tokens,
        "mismatched_pairs": meanings.describe(),
        "weights": pipeline.weights,
        "metrics": {
            "rouge_l": "rouge-score RougeScorer(['rougeL']) F1, its tokenizer, no stemmer; CJK characters one token each",
            "bleu4": "NLTK sentence_bleu, weights 0.25 x 4, SmoothingFunction().method3, on the same tokens",
            "auc": "scikit-learn roc_auc_score (trapezoid, ties as one step)",
        },
        "roiscope_version": env!("CARGO_PKG_VERSION"),
    });
    let (json_path, html_path) = report::write(&out, &meta, &summary, &cases)?;
    Ok(Evaluation {
        summary,
        threshold,
        calibration,
        json_path,
        html_path,
        weights: pipeline.weights.summary(),
        warnings,
        mismatch_rule: meanings.describe(),
    })
}

impl Evaluation {
    /// The result in a few lines, as `roiscope eval` prints it and the window shows it.
    pub fn lines(&self) -> Vec<String> {
        let s = &self.summary;
        let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
        vec![
            format!(
                "{} records ({} errors) in {:.1} s ({:.2} images/s)",
                s.records, s.errors, s.seconds, s.images_per_second
            ),
            format!(
                "ROI: mean IoU {}, IoU@0.5 {}",
                f(s.roi.mean_iou),
                f(s.roi.iou_at_0_5)
            ),
            format!(
                "match: AUC {}, at threshold {:.3} FNR {} FPR {}",
                f(s.matching.auc),
                self.threshold,
                f(s.matching.rates.false_negative_rate),
                f(s.matching.rates.false_positive_rate)
            ),
            format!("  ({})", self.mismatch_rule),
            format!(
                "text: ROUGE-L {}, BLEU-4 {}, exact match {}",
                f(s.text.rouge_l),
                f(s.text.bleu4),
                f(s.text.exact_match)
            ),
            format!(
                "gate: coverage {}, accuracy of released {}",
                f(s.gate.coverage),
                f(s.gate.released_accuracy)
            ),
        ]
    }

    /// The calibration line, when one was made.
    pub fn calibration_line(&self) -> Option<String> {
        self.calibration.as_ref().map(|(cal, file)| {
            format!(
                "calibrated threshold {:.4} (sensitivity {:.3}, false-positive rate {}) -> {}",
                cal.threshold,
                cal.sensitivity,
                cal.false_positive_rate
                    .map_or("n/a".into(), |v| format!("{v:.3}")),
                file.display()
            )
        })
    }
}
