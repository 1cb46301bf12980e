//! `roiscope train`: fine-tune a model folder on a project's train split, with live progress and
//! every event in `RUN_DIR/metrics.jsonl`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::train::trainer::{
    checkpoint_config, latest_checkpoint, load_inputs, Event, TrainConfig, Trainer,
};

pub const LONG_ABOUT: &str = "Fine-tune a Qwen3-VL model folder on a project's train split.\n\n\
    Trains LoRA adapters (the base model stays frozen), the ROI head, the match head and the \
    learned task weights together; a share of each batch (negative_ratio) pairs a question with \
    another record's image as a negative. Progress shows every task's loss; every event (step \
    losses, weighted terms, task precisions, learning rates, throughput, checkpoints) is written \
    to RUN_DIR/metrics.jsonl. Checkpoints go to RUN_DIR/checkpoint-<step>/: the adapter in peft's \
    layout, heads.safetensors, optimizer.safetensors and trainer_state.json; --resume continues the \
    run from its latest checkpoint exactly as if it had not stopped. Settings come from --config \
    (TOML, every key optional; see README) and the flags below.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Project folder (its train split is used)
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
    /// Model folder
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Run folder for metrics and checkpoints (created; must be new or empty)
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "resume",
        conflicts_with = "resume"
    )]
    out: Option<PathBuf>,
    /// Training settings (TOML)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Devices, one model replica each (data parallel): cpu, cuda:0, cuda:0,1; cpu,cpu runs two
    /// CPU replicas
    #[arg(long, value_name = "LIST", default_value = "cpu")]
    devices: String,
    /// Stop after this many optimiser steps (overrides the config)
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Continue the run in RUN_DIR from its latest checkpoint, with the run's own settings
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    resume: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The base weights' dtype is a setting of the run, so the settings come first.
    let base_dtype = match &args.resume {
        Some(run) => checkpoint_config(&latest_checkpoint(run)?)?.base_dtype,
        None => match &args.config {
            Some(path) => TrainConfig::from_toml_file(path)?.base_dtype,
            None => TrainConfig::default().base_dtype,
        },
    };
    let inputs = || load_inputs(&args.project, &args.model, &args.devices, base_dtype);
    let (mut trainer, run_dir) = match (&args.resume, &args.out) {
        (Some(run), _) => {
            if args.max_steps.is_some() {
                bail!("--max-steps cannot change a resumed run (its schedule depends on it)");
            }
            let (devices, examples, folder) = inputs()?;
            (
                Trainer::resume(folder, examples, run, &devices)?,
                run.clone(),
            )
        }
        (None, Some(out)) => {
            let mut config = match &args.config {
                Some(path) => TrainConfig::from_toml_file(path)?,
                None => TrainConfig::default(),
            };
            if let Some(n) = args.max_steps {
                config.max_steps = n;
            }
            config.validate()?;
            if out.exists()
                && std::fs::read_dir(out)
                    .with_context(|| format!("cannot read {}", out.display()))?
                    .next()
                    .is_some()
            {
                bail!("{} is not empty; give a new run folder", out.display());
            }
            let (devices, examples, folder) = inputs()?;
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            (
                Trainer::new(config, folder, examples, out, &devices)?,
                out.clone(),
            )
        }
        (None, None) => bail!("give --out for a new run or --resume for an old one"),
    };

    let metrics_path = run_dir.join("metrics.jsonl");
    // A resumed run appends to its metrics.
    let mut metrics = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot open {}", metrics_path.display()))?,
    );
    let (events_tx, events_rx) = mpsc::channel();
    let (_control_tx, control_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || trainer.run(&events_tx, &control_rx));

    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    for event in events_rx {
        let mut line = serde_json::to_value(&event)?;
        line["time"] = serde_json::json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0));
        writeln!(metrics, "{line}")?;
        metrics.flush()?;
        match &event {
            Event::Started {
                total_steps,
                examples,
                trainable_parameters,
                devices,
            } => {
                bar.set_length(*total_steps as u64);
                bar.println(format!(
                    "training on {examples} examples, {total_steps} steps, {trainable_parameters} \
                     trainable parameters, on {}",
                    devices.join(", ")
                ));
            }
            Event::Step {
                step, loss, total, ..
            } => {
                bar.set_position(*step as u64);
                bar.set_message(format!(
                    "roi {:.3}  match {:.3}  lm {:.3}  total {:.3}",
                    loss[0], loss[1], loss[2], total
                ));
            }
            Event::Checkpoint { dir, .. } => bar.println(format!("checkpoint {}", dir.display())),
            Event::Warning { message } => bar.println(format!("warning: {message}")),
            Event::Finished { step } | Event::Stopped { step } => {
                bar.finish_and_clear();
                eprintln!(
                    "done after {step} steps; metrics in {}",
                    metrics_path.display()
                );
            }
            _ => {}
        }
    }
    match worker.join() {
        Ok(result) => result.map(|()| ExitCode::SUCCESS),
        Err(_) => bail!("the training thread panicked"),
    }
}
