//! `roiscope eval`: a checkpoint on a project split; report.json and report.html; optional
//! calibration of the verify threshold.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::model::quantized::WeightFormat;
use anyhow::Context;
use serde_json::json;

use super::infer::parse_device;
use crate::data::store::{Project, Split};
use crate::eval::{self, metrics, report};
use crate::infer::{write_calibration, Calibration, Pipeline, ThresholdSource};
use crate::train::data::load_examples;

pub const LONG_ABOUT: &str = "Evaluate a trained checkpoint on a project split.\n\n\
    Every record runs through locate -> diagnose -> verify as `roiscope infer --adapter` does; \
    the match head also scores the record's own diagnosis and another record's (a mismatched \
    pair). Reported: ROI mean IoU and IoU@0.5; match ROC, AUC, false-negative and false-positive \
    rates at the threshold; ROUGE-L F1 and BLEU-4 of the generated diagnosis (rouge-score's \
    tokens, NLTK's smoothing method 3); exact match; verify-gate coverage and the accuracy of \
    the released diagnoses. Writes REPORT_DIR/report.json and report.html (default: \
    RUN_DIR/eval-<split>).\n\n\
    --calibrate picks the highest threshold at which --target-sensitivity of the true pairs are \
    released, uses it for the report and stores it in RUN_DIR/calibration.json, where infer and \
    later evals find it. Calibrate on val, report on test.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Project folder
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
    /// Base model folder (the one the run was trained from)
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Run folder (its latest checkpoint) or checkpoint folder
    #[arg(long, value_name = "RUN_DIR|CHECKPOINT")]
    adapter: PathBuf,
    /// Which split to evaluate
    #[arg(long, value_enum, default_value = "val")]
    split: Split,
    /// Where report.json and report.html go (default: RUN_DIR/eval-<split>)
    #[arg(long, value_name = "REPORT_DIR")]
    out: Option<PathBuf>,
    /// Calibrate the verify threshold on this split and store it in the run
    #[arg(long)]
    calibrate: bool,
    /// With --calibrate: the share of true pairs that must be released
    #[arg(long, value_name = "S", default_value_t = 0.95, requires = "calibrate")]
    target_sensitivity: f64,
    /// Threshold to report with (default: the run's calibration, else 0.5)
    #[arg(long, value_name = "P", conflicts_with = "calibrate")]
    threshold: Option<f64>,
    /// Most tokens per generated diagnosis
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_new_tokens: usize,
    /// At most this many records of the split (0: all)
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: usize,
    /// How the weights are stored: f32, bf16, q8_0 or q4k (see `roiscope infer --help`)
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "f32")]
    weights: WeightFormat,
    /// Device: cpu, or cuda / cuda:N in a build with the `cuda` feature
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.target_sensitivity > 0.0 && args.target_sensitivity <= 1.0,
        "--target-sensitivity must be in (0, 1]"
    );
    let project = Project::open(&args.project)?;
    let mut examples = load_examples(&project, args.split)?;
    anyhow::ensure!(
        !examples.is_empty(),
        "the {} split of {} is empty",
        args.split.as_str(),
        args.project.display()
    );
    if args.limit > 0 {
        examples.truncate(args.limit);
    }
    let device = parse_device(&args.device)?;
    let mut pipeline = Pipeline::open_in(
        &args.model,
        &args.adapter,
        args.threshold,
        args.weights,
        &device,
    )?;
    eprintln!("{}", pipeline.weights.summary());
    pipeline.max_new_tokens = args.max_new_tokens;
    let out = args.out.clone().unwrap_or_else(|| {
        pipeline
            .checkpoint
            .run
            .join(format!("eval-{}", args.split.as_str()))
    });
    let bar = super::infer::pipeline::progress_bar(examples.len());
    let started = Instant::now();
    let mut cases = eval::run_cases(&pipeline, &examples, |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut threshold = pipeline.threshold;
    let mut threshold_source = serde_json::to_value(&pipeline.threshold_source)?;
    let mut calibration = None;
    if args.calibrate {
        let (scores, labels) = eval::pair_scores(&cases);
        let t = metrics::threshold_for_sensitivity(&scores, &labels, args.target_sensitivity)
            .context("no true pair was scored: nothing to calibrate on")?;
        let rates = metrics::rates_at(&scores, &labels, t);
        let cal = Calibration {
            threshold: t,
            target_sensitivity: args.target_sensitivity,
            sensitivity: 1.0 - rates.false_negative_rate.unwrap_or(1.0),
            false_positive_rate: rates.false_positive_rate,
            split: args.split.as_str().into(),
            positives: labels.iter().filter(|&&l| l).count(),
            negatives: labels.iter().filter(|&&l| !l).count(),
            checkpoint: pipeline.checkpoint.name(),
        };
        let file = write_calibration(&pipeline.checkpoint, &cal)?;
        eprintln!(
            "calibrated threshold {t:.4} (sensitivity {:.3}, false-positive rate {}) -> {}",
            cal.sensitivity,
            cal.false_positive_rate
                .map_or("n/a".into(), |v| format!("{v:.3}")),
            file.display()
        );
        threshold = t;
        threshold_source = json!({"source": "calibrated_now", "file": file});
        calibration = Some(cal);
    } else if let ThresholdSource::Calibrated { checkpoint, .. } = &pipeline.threshold_source {
        if *checkpoint != pipeline.checkpoint.name() {
            eprintln!(
                "warning: the run's calibration was made on {checkpoint}, this is {}",
                pipeline.checkpoint.name()
            );
        }
    }
    let summary = eval::summarise(&mut cases, threshold, seconds);
    let meta = json!({
        "model": args.model.display().to_string(),
        "checkpoint": pipeline.checkpoint.dir.display().to_string(),
        "project": args.project.display().to_string(),
        "split": args.split.as_str(),
        "heads_layout": pipeline.heads.layout,
        "threshold_source": threshold_source,
        "calibration": calibration,
        "max_new_tokens": args.max_new_tokens,
        "weights": pipeline.weights,
        "metrics": {
            "rouge_l": "rouge-score RougeScorer(['rougeL']) F1, its tokenizer, no stemmer; CJK characters one token each",
            "bleu4": "NLTK sentence_bleu, weights 0.25 x 4, SmoothingFunction().method3, on the same tokens",
            "auc": "scikit-learn roc_auc_score (trapezoid, ties as one step)",
        },
        "roiscope_version": env!("CARGO_PKG_VERSION"),
    });
    let (json_path, html_path) = report::write(&out, &meta, &summary, &cases)?;
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    println!(
        "{} records ({} errors) in {seconds:.1} s ({:.2} images/s)",
        summary.records, summary.errors, summary.images_per_second
    );
    println!(
        "ROI: mean IoU {}, IoU@0.5 {}",
        f(summary.roi.mean_iou),
        f(summary.roi.iou_at_0_5)
    );
    println!(
        "match: AUC {}, at threshold {threshold:.3} FNR {} FPR {}",
        f(summary.matching.auc),
        f(summary.matching.rates.false_negative_rate),
        f(summary.matching.rates.false_positive_rate)
    );
    println!(
        "text: ROUGE-L {}, BLEU-4 {}, exact match {}",
        f(summary.text.rouge_l),
        f(summary.text.bleu4),
        f(summary.text.exact_match)
    );
    println!(
        "gate: coverage {}, accuracy of released {}",
        f(summary.gate.coverage),
        f(summary.gate.released_accuracy)
    );
    println!(
        "report: {} and {}",
        json_path.display(),
        html_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
