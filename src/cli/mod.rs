//! The `roiscope` command line: one subcommand per job, results on stdout, progress and
//! diagnostics on stderr.

mod compare;
mod detect_roi;
mod eval;
mod export;
mod infer;
mod init_model;
mod prepare;
mod project;
mod sample;
mod synthetic;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "roiscope",
    version,
    about = "Workbench for ROI-grounded medical vision-language fine-tuning",
    long_about = "Workbench for ROI-grounded medical vision-language fine-tuning.\n\n\
        Run without a command to open the bundled sample project."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Find the green ROI boxes drawn into images; one JSON line per image on stdout
    #[command(long_about = detect_roi::LONG_ABOUT)]
    DetectRoi(detect_roi::Args),
    /// Import seed-format records into a project: detect ROIs, remove markers, report
    #[command(long_about = prepare::LONG_ABOUT)]
    Prepare(prepare::Args),
    /// Export a project as seed JSON, LLaMA-Factory JSON, JSON lines or COCO
    Export(export::Args),
    /// Inspect or edit a project
    #[command(subcommand)]
    Project(project::Command),
    /// Generate a model's answer to a prompt about an image
    #[command(long_about = infer::LONG_ABOUT)]
    Infer(infer::Args),
    /// Evaluate a trained run on a project split: IoU, match AUC, ROUGE-L, BLEU-4, the verify gate
    #[command(long_about = eval::LONG_ABOUT)]
    Eval(eval::Args),
    /// Write a Qwen3-VL model folder with random weights (tests and demos)
    InitModel(init_model::Args),
    /// Fine-tune a model on a project: LoRA, ROI and match heads, live losses
    #[command(long_about = train::LONG_ABOUT)]
    Train(train::Args),
    /// Summarise the bundled sample project (records, fields, detected boxes)
    Sample(sample::Args),
    /// Write a synthetic lesion data set (a learnable ROI task with known boxes)
    #[command(long_about = synthetic::LONG_ABOUT)]
    Synthetic(synthetic::Args),
    /// Compare runs: validation metrics of every checkpoint against samples seen, and a plot
    #[command(long_about = compare::LONG_ABOUT)]
    Compare(compare::Args),
}

/// Parses the command line and runs it; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::DetectRoi(args)) => detect_roi::run(args),
        Some(Command::Prepare(args)) => prepare::run(args),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Project(command)) => project::run(command),
        Some(Command::Infer(args)) => infer::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::InitModel(args)) => init_model::run(args),
        Some(Command::Sample(args)) => sample::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Synthetic(args)) => synthetic::run(args),
        Some(Command::Compare(args)) => compare::run(args),
        None => crate::app::run().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roiscope: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
