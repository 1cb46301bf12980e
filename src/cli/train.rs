//! `roiscope train`: fine-tune a model folder on a project's train split, with live progress and
//! every event in `RUN_DIR/metrics.jsonl`. SIGINT (Ctrl-C) and SIGTERM stop the run at the next
//! step boundary with a checkpoint; a second SIGINT quits at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::train::metrics::METRICS_FILE;
use crate::train::run::{Options, Plan, TrainingRun};
use crate::train::trainer::{latest_checkpoint, Control, Event, TrainConfig};

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
    let plan = plan(&args)?;
    let run_dir = plan.dir().to_path_buf();
    catch_signals();
    let run = TrainingRun::start(plan, Options::default(), || {});
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut stop_sent = false;
    let mut last_checkpoint = None;
    loop {
        // The first signal becomes a stop, said once; events are looked for between signals.
        if !stop_sent && SIGNALS.load(Ordering::SeqCst) > 0 {
            stop_sent = true;
            say(
                &bar,
                format!(
                    "{}: stopping at the next step boundary and saving a checkpoint (Ctrl-C \
                     again quits at once, losing the steps since the last checkpoint)",
                    signal_name(FIRST_SIGNAL.load(Ordering::SeqCst))
                ),
            );
            run.send(Control::Stop);
        }
        let event = match run.next_event_within(Duration::from_millis(20)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
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
                    run_dir.join(METRICS_FILE).display()
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
    run.join().map(|()| ExitCode::SUCCESS)
}

/// The run the arguments ask for: a new one in --out, or --resume's continued.
fn plan(args: &Args) -> anyhow::Result<Plan> {
    match (&args.resume, &args.out) {
        (Some(run), _) => Ok(Plan::Resume {
            run: run.clone(),
            project: args.project.clone(),
            model: args.model.clone(),
            devices: args.devices.clone(),
            config: args.config.clone(),
            max_steps: args.max_steps,
        }),
        (None, Some(out)) => {
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
            Ok(Plan::New {
                project: project.clone(),
                model: model.clone(),
                devices: args.devices.clone().unwrap_or_else(|| "cpu".into()),
                config,
                out: out.clone(),
            })
        }
        (None, None) => bail!("give --out for a new run or --resume for an old one"),
    }
}

/// A line on stderr above the progress bar (plainly when the bar is hidden: not a terminal).
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}
