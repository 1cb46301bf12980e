//! `roiscope compare`: validation metrics of several runs against the samples each had seen
//! (see `eval::compare`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context};

use super::infer::parse_device;
use crate::data::files::write_atomic;
use crate::data::store::{Project, Split};
use crate::eval::compare::{checkpoints, evaluate, plot, table};
use crate::train::data::load_examples;

pub const LONG_ABOUT: &str = "Compare training runs: every checkpoint-<step>/ of every RUN \
    evaluated on a project split (default val) as `roiscope eval` does, printed as a table of \
    mean IoU, match AUC, ROUGE-L and exact match against the training samples each run had seen \
    (steps x batch_size x grad_accum). Writes OUT/compare.json and OUT/compare.svg (one panel per \
    metric, one curve per run). Train the runs with checkpoint_every set, e.g. the ablation \
    presets of `roiscope train --preset` (sft, sft-roi, multitask, multitask-fixed) on the same \
    project and model.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folders (each with checkpoint-<step>/ folders)
    #[arg(value_name = "RUN", required = true)]
    runs: Vec<PathBuf>,
    /// Project folder
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
    /// Base model folder (the one the runs were trained from)
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Which split to evaluate on
    #[arg(long, value_enum, default_value = "val")]
    split: Split,
    /// Where compare.json and compare.svg go
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Most tokens per generated diagnosis
    #[arg(long, value_name = "N", default_value_t = 48)]
    max_new_tokens: usize,
    /// Device: cpu, or cuda / cuda:N in a build with the `cuda` feature
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let device = parse_device(&args.device)?;
    let project = Project::open(&args.project)?;
    let examples = load_examples(&project, args.split)?;
    ensure!(
        !examples.is_empty(),
        "the {:?} split of {} is empty: nothing to compare on",
        args.split,
        args.project.display()
    );
    let mut points = Vec::new();
    for run in &args.runs {
        let name = run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| run.display().to_string());
        for (step, ckpt) in checkpoints(run)? {
            eprintln!("{name}: checkpoint {step} on {} records", examples.len());
            points.push(
                evaluate(
                    &args.model,
                    &name,
                    &ckpt,
                    &examples,
                    args.max_new_tokens,
                    &device,
                )
                .with_context(|| format!("cannot evaluate {}", ckpt.display()))?,
            );
        }
    }
    print!("{}", table(&points));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write_atomic(
        &args.out.join("compare.json"),
        (serde_json::to_string_pretty(&points)? + "\n").as_bytes(),
    )?;
    write_atomic(&args.out.join("compare.svg"), plot(&points).as_bytes())?;
    eprintln!(
        "wrote {} and {}",
        args.out.join("compare.json").display(),
        args.out.join("compare.svg").display()
    );
    Ok(ExitCode::SUCCESS)
}
