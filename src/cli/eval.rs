//! `roiscope eval`: a checkpoint on a project split; report.json and report.html; optional
//! calibration of the verify threshold.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use super::infer::parse_device;
use crate::data::store::Split;
use crate::eval::evaluate::{evaluate, EvalRequest};
use crate::model::quantized::WeightFormat;

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
    let device = parse_device(&args.device)?;
    let req = EvalRequest {
        project: args.project,
        model: args.model,
        adapter: args.adapter,
        split: args.split,
        out: args.out,
        calibrate: args.calibrate.then_some(args.target_sensitivity),
        threshold: args.threshold,
        max_new_tokens: args.max_new_tokens,
        limit: args.limit,
        weights: args.weights,
    };
    // The bar's length is known once the split is read.
    let mut bar: Option<indicatif::ProgressBar> = None;
    let never = AtomicBool::new(false);
    let result = evaluate(
        &req,
        &device,
        |done, total| {
            bar.get_or_insert_with(|| super::infer::pipeline::progress_bar(total))
                .set_position(done as u64)
        },
        &never,
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let evaluation = result?;
    eprintln!("{}", evaluation.weights);
    if let Some(line) = evaluation.calibration_line() {
        eprintln!("{line}");
    }
    for w in &evaluation.warnings {
        eprintln!("warning: {w}");
    }
    for line in evaluation.lines() {
        println!("{line}");
    }
    println!(
        "report: {} and {}",
        evaluation.json_path.display(),
        evaluation.html_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
