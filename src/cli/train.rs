//! `roiscope train`: fine-tune a model folder on a project's train split, with live progress and
//! every event in `RUN_DIR/metrics.jsonl`. SIGINT (Ctrl-C) and SIGTERM stop the run at the next
//! step boundary with a checkpoint; a second SIGINT quits at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::train::metrics::MetricsWriter;
use crate::train::run_record::{extend_config, RunRecord};
use crate::train::trainer::{
    checkpoint_config, latest_checkpoint, load_inputs, load_val_examples, Control, Event,
    TrainConfig, Trainer,
};

pub const LONG_ABOUT: &str = "Fine-tune a Qwen3-VL model folder on a project's train split.\n\n\
    Trains LoRA adapters (the base model stays frozen), the ROI head, the match head and the \
    learned task weights together; a share of each batch (negative_ratio) pairs a question with \
    another record's image as a negative. Progress shows every task's loss; every event (step \
    losses, weighted terms, task precisions, learning rates, throughput, checkpoints) is written \
    to RUN_DIR/metrics.jsonl. Checkpoints go to RUN_DIR/checkpoint-<step>/ (the adapter in peft's \
    layout, heads.safetensors, optimizer.safetensors and trainer_state.json) every \
    checkpoint_every steps and every checkpoint_minutes minutes (defaults 500 and 30), the newest \
    keep_checkpoints (3) kept; each is complete on disk before an older one is removed.\n\n\
    Ctrl-C or SIGTERM stops at the next step boundary, saves a checkpoint and exits 0; a second \
    Ctrl-C quits at once. `--resume RUN_DIR` continues a run exactly as if it had not stopped, \
    with nothing else to give: the run remembers its project, model folder (refused if its \
    weights changed), devices and settings; --max-steps or --config (epochs, max_steps and the \
    checkpoint settings only) extend it. Settings come from --config (TOML, every key optional; \
    see README) and the flags below.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Project folder (its train split is used); a resumed run remembers its own
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    project: Option<PathBuf>,
    /// Model folder; a resumed run remembers its own
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Run folder for metrics and checkpoints (created; must be new or empty)
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "resume",
        conflicts_with = "resume"
    )]
    out: Option<PathBuf>,
    /// Training settings (TOML); with --resume, the settings that may change
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Devices, one model replica each (data parallel): cpu, cuda:0, cuda:0,1; cpu,cpu runs two
    /// CPU replicas [default: cpu, or the resumed run's]
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Stop after this many optimiser steps (overrides the config; extends a resumed run)
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Ablation preset, applied over the config: sft (the LM alone), sft-roi (+ the ROI head),
    /// multitask (+ the match head with negatives; the defaults), multitask-fixed (task weights
    /// fixed at 0.5); compare the runs with `roiscope compare`
    #[arg(long, value_name = "NAME", conflicts_with = "resume")]
    preset: Option<String>,
    /// Continue the run in RUN_DIR from its latest complete checkpoint
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
}

/// Signals received so far, and the first one.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

#[cfg(target_os = "linux")]
extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: atomics and _exit.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
        FIRST_SIGNAL.store(signal, Ordering::SeqCst);
    } else if signal == libc::SIGINT {
        unsafe { libc::_exit(130) };
    }
}

/// SIGINT and SIGTERM are counted instead of ending the process.
fn catch_signals() {
    #[cfg(target_os = "linux")]
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn signal_name(signal: i32) -> &'static str {
    #[cfg(target_os = "linux")]
    if signal == libc::SIGTERM {
        return "SIGTERM";
    }
    let _ = signal;
    "SIGINT"
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mut trainer, run_dir) = match (&args.resume, &args.out) {
        (Some(run), _) => (resume(run, &args)?, run.clone()),
        (None, Some(out)) => (start(out, &args)?, out.clone()),
        (None, None) => bail!("give --out for a new run or --resume for an old one"),
    };
    catch_signals();
    let mut metrics = MetricsWriter::open(&run_dir)?;
    let (events_tx, events_rx) = mpsc::channel();
    let (control_tx, control_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || trainer.run(&events_tx, &control_rx));
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Turns the first signal into a stop, said once.
    let ended = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ended, bar) = (ended.clone(), bar.clone());
        std::thread::spawn(move || {
            while !ended.load(Ordering::SeqCst) {
                if SIGNALS.load(Ordering::SeqCst) > 0 {
                    say(
                        &bar,
                        format!(
                            "{}: stopping at the next step boundary and saving a checkpoint \
                         (Ctrl-C again quits at once, losing the steps since the last checkpoint)",
                            signal_name(FIRST_SIGNAL.load(Ordering::SeqCst))
                        ),
                    );
                    let _ = control_tx.send(Control::Stop);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut last_checkpoint = None;
    for event in events_rx {
        if let Some(warning) = metrics.write(&event) {
            say(&bar, format!("warning: {warning}"));
        }
        match &event {
            Event::Started {
                total_steps,
                examples,
                trainable_parameters,
                devices,
            } => {
                bar.set_length(*total_steps as u64);
                say(
                    &bar,
                    format!(
                    "training on {examples} examples, {total_steps} steps, {trainable_parameters} \
                     trainable parameters, on {}",
                    devices.join(", ")
                ),
                );
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
            Event::Validation {
                step,
                loss,
                roi_iou,
                match_auc,
                pairs,
                best,
                ..
            } => {
                let show = |x: &Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
                say(
                    &bar,
                    format!(
                    "step {step}: validation on {pairs} pairs: roi {:.3}  match {:.3}  lm {:.3}  \
                     ROI mean IoU {}  match AUC {}{}",
                    loss[0],
                    loss[1],
                    loss[2],
                    show(roi_iou),
                    show(match_auc),
                    if *best { "  (best so far)" } else { "" }
                ),
                );
            }
            Event::Checkpoint { dir, .. } => {
                last_checkpoint = Some(dir.clone());
                say(&bar, format!("checkpoint {}", dir.display()));
            }
            Event::Warning { message } => say(&bar, format!("warning: {message}")),
            Event::Finished { step } => {
                bar.finish_and_clear();
                eprintln!(
                    "done after {step} steps; metrics in {}",
                    metrics.path().display()
                );
            }
            Event::Stopped { step } => {
                bar.finish_and_clear();
                eprintln!(
                    "stopped at step {step}; checkpoint {}\ncontinue with: roiscope train \
                     --resume {}",
                    last_checkpoint
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display(),
                    run_dir.display()
                );
            }
            Event::Error { .. } => {
                bar.finish_and_clear();
                if let Ok(ckpt) = latest_checkpoint(&run_dir) {
                    eprintln!(
                        "the last complete checkpoint is {}; continue with: roiscope train \
                         --resume {}",
                        ckpt.display(),
                        run_dir.display()
                    );
                }
            }
            _ => {}
        }
    }
    ended.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    match worker.join() {
        Ok(result) => result.map(|()| ExitCode::SUCCESS),
        Err(_) => bail!("the training thread panicked"),
    }
}

/// A new run in `out`, recorded in `out/run.json`.
fn start(out: &Path, args: &Args) -> anyhow::Result<Trainer> {
    let (Some(project), Some(model)) = (&args.project, &args.model) else {
        bail!("a new run needs --project and --model");
    };
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_toml_file(path)?,
        None => TrainConfig::default(),
    };
    if let Some(n) = args.max_steps {
        config.max_steps = n;
    }
    if let Some(name) = &args.preset {
        config.apply_preset(name)?;
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
    let devices = args.devices.as_deref().unwrap_or("cpu");
    let (specs, examples, folder) = load_inputs(project, model, devices, config.base_dtype)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let val = load_val_examples(project)?;
    RunRecord::new(project, model, devices, &config)?.write(out)?;
    let mut trainer = Trainer::new(config, folder, examples, out, &specs)?;
    trainer.set_validation(val);
    Ok(trainer)
}

/// The run in `run` continued: its project, model folder and devices unless given, its
/// settings extended by --config and --max-steps.
fn resume(run: &Path, args: &Args) -> anyhow::Result<Trainer> {
    let record = RunRecord::read(run)?;
    let (project, model) = match (&args.project, &args.model, &record) {
        (Some(p), Some(m), _) => (p.clone(), m.clone()),
        (p, m, Some(r)) => (
            p.clone().unwrap_or_else(|| r.project.clone()),
            m.clone().unwrap_or_else(|| r.model.clone()),
        ),
        _ => bail!(
            "{} has no run.json (it was started by an older roiscope); give --project and --model",
            run.display()
        ),
    };
    let devices = args
        .devices
        .clone()
        .or_else(|| record.as_ref().map(|r| r.devices.clone()))
        .unwrap_or_else(|| "cpu".into());
    let config = if args.config.is_some() || args.max_steps.is_some() {
        let ckpt = latest_checkpoint(run)?;
        Some(extend_config(
            &checkpoint_config(&ckpt)?,
            args.config.as_deref(),
            args.max_steps,
        )?)
    } else {
        None
    };
    // The base weights' dtype is a setting of the run.
    let base_dtype = match &config {
        Some(c) => c.base_dtype,
        None => checkpoint_config(&latest_checkpoint(run)?)?.base_dtype,
    };
    let (specs, examples, folder) = load_inputs(&project, &model, &devices, base_dtype)?;
    let val = load_val_examples(&project)?;
    let mut trainer = Trainer::resume_with(folder, examples, run, &specs, config)?;
    trainer.set_validation(val);
    Ok(trainer)
}

/// A line on stderr above the progress bar (plainly when the bar is hidden: not a terminal).
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}
