//! The training dashboard: the run's settings, Start / Pause / Stop-and-save, and live curves.
//! The trainer runs on its own thread and talks only through channels; the UI drains them each
//! frame and never waits. Every event also goes to `RUN_DIR/metrics.jsonl` (as with
//! `roiscope train`), so earlier runs can be listed and their curves restored; a listed run with
//! a checkpoint can be continued (as `roiscope train --resume`), its curves growing on.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use egui::{RichText, Ui};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::thin::thin;
use crate::train::metrics::{read_metrics, MetricsWriter};
use crate::train::run_record::RunRecord;
use crate::train::trainer::{
    checkpoint_config, checkpoint_step, latest_checkpoint, load_inputs, load_val_examples,
    BaseDtype, Control, Event, TrainConfig, Trainer, TASKS,
};

/// Every curve of a run, by optimiser step.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    pub steps: Vec<f64>,
    pub loss: [Vec<f64>; 3],
    pub weighted: [Vec<f64>; 3],
    pub total: Vec<f64>,
    pub precision: [Vec<f64>; 3],
    pub lr_lora: Vec<f64>,
    pub lr_heads: Vec<f64>,
    pub total_steps: usize,
    pub eta_seconds: f64,
    pub samples_per_second: f64,
    /// Lines of the metrics file these were read from that could not be read.
    pub unreadable_lines: usize,
    /// Validations on the val split: their steps, raw loss per task, ROI mean IoU and match
    /// AUC (NaN where there was none).
    pub val: ValCurves,
}

/// The validation curves of a run.
#[derive(Debug, Clone, Default)]
pub struct ValCurves {
    pub steps: Vec<f64>,
    pub loss: [Vec<f64>; 3],
    pub roi_iou: Vec<f64>,
    pub match_auc: Vec<f64>,
}

impl ValCurves {
    fn truncate(&mut self, n: usize) {
        self.steps.truncate(n);
        for v in self
            .loss
            .iter_mut()
            .chain([&mut self.roi_iou, &mut self.match_auc])
        {
            v.truncate(n);
        }
    }
}

impl Curves {
    pub fn push(&mut self, e: &Event) {
        if let Event::Step {
            step,
            total_steps,
            loss,
            weighted,
            precision,
            total,
            lr_lora,
            lr_heads,
            samples_per_second,
            eta_seconds,
            ..
        } = e
        {
            let x = *step as f64;
            if self.steps.last().is_some_and(|&last| x <= last) {
                // A resumed run repeats the steps after its checkpoint (a run killed after its
                // last checkpoint logged more): the new ones replace the old from here on.
                self.truncate(self.steps.partition_point(|&s| s < x));
            }
            self.steps.push(x);
            for i in 0..3 {
                self.loss[i].push(loss[i]);
                self.weighted[i].push(weighted[i]);
                self.precision[i].push(precision[i]);
            }
            self.total.push(*total);
            self.lr_lora.push(*lr_lora);
            self.lr_heads.push(*lr_heads);
            self.total_steps = *total_steps;
            self.eta_seconds = *eta_seconds;
            self.samples_per_second = *samples_per_second;
        }
        if let Event::Validation {
            step,
            loss,
            roi_iou,
            match_auc,
            ..
        } = e
        {
            let x = *step as f64;
            let v = &mut self.val;
            v.truncate(v.steps.partition_point(|&s| s < x));
            v.steps.push(x);
            for (curve, l) in v.loss.iter_mut().zip(loss) {
                curve.push(*l);
            }
            v.roi_iou.push(roi_iou.unwrap_or(f64::NAN));
            v.match_auc.push(match_auc.unwrap_or(f64::NAN));
        }
    }

    /// Reads the step events of a `metrics.jsonl` back as events. Lines that cannot be read (a
    /// line cut short by a crash) are counted, not guessed at.
    pub fn from_metrics(path: &Path) -> anyhow::Result<Curves> {
        let (lines, unreadable) = read_metrics(path)?;
        let mut curves = Curves::default();
        for line in &lines {
            curves.push(&line.event);
        }
        curves.unreadable_lines = unreadable.len();
        Ok(curves)
    }

    /// Keeps the points up to and including `step` (where a continued run picks up).
    pub fn keep_until(&mut self, step: usize) {
        self.truncate(self.steps.partition_point(|&s| s <= step as f64));
        let v = &mut self.val;
        v.truncate(v.steps.partition_point(|&s| s <= step as f64));
    }

    fn truncate(&mut self, n: usize) {
        self.steps.truncate(n);
        for v in self
            .loss
            .iter_mut()
            .chain(&mut self.weighted)
            .chain(&mut self.precision)
            .chain([&mut self.total, &mut self.lr_lora, &mut self.lr_heads])
        {
            v.truncate(n);
        }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// A run in progress (or just ended) on the worker thread.
pub struct ActiveRun {
    pub dir: PathBuf,
    control: Sender<Control>,
    /// The trainer's events, each with the moment it was handed to the UI.
    events: Receiver<(Instant, Event)>,
    pub paused: bool,
    pub ended: bool,
}

/// What the dashboard is doing, for the status line and for tests.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Idle,
    Loading,
    Running,
    Paused,
    Stopping,
    Ended(String),
    Failed(String),
}

pub struct TrainingPanel {
    pub config: TrainConfig,
    pub devices: String,
    /// CPU threads the trainer computes on. One core is left to the window by default: with
    /// every core busy, the frames the compositor and the software rasteriser must draw wait
    /// behind the trainer (measured: BENCHMARKS.md, workbench).
    pub threads: usize,
    pub run: Option<ActiveRun>,
    pub curves: Curves,
    pub state: RunState,
    /// Run folders of the project with a metrics file, newest first.
    pub runs: Vec<PathBuf>,
    runs_of: Option<PathBuf>,
    /// Which run the curves show.
    pub showing: Option<PathBuf>,
    /// The step of that run's latest checkpoint, where Continue picks up.
    pub checkpoint_step: Option<usize>,
    /// The plots' x range last frame: the curves are thinned to it (see `thin`).
    view_x: Option<(f64, f64)>,
    /// A run whose curves a worker thread is reading (`load_run`).
    loading: Option<(PathBuf, Receiver<anyhow::Result<LoadedRun>>)>,
    pub log: Vec<String>,
    /// The longest any event taken by `poll` had waited for it since the frame log last took
    /// this (the responsiveness benchmark's measure for streaming); `None`: no event since.
    pub event_wait: Option<Duration>,
    /// The close dialog is shown (the window's close button was pressed while training).
    pub confirm_close: bool,
    /// Stop-and-save was chosen there: the window closes when the run has ended.
    pub closing: bool,
    close_sent: bool,
}

impl Default for TrainingPanel {
    fn default() -> Self {
        TrainingPanel {
            // Small, fast defaults for a workstation run; the user raises them.
            config: TrainConfig {
                epochs: 1,
                ..TrainConfig::default()
            },
            devices: "cpu".into(),
            threads: default_trainer_threads(),
            run: None,
            curves: Curves::default(),
            state: RunState::Idle,
            runs: Vec::new(),
            runs_of: None,
            showing: None,
            checkpoint_step: None,
            view_x: None,
            loading: None,
            log: Vec::new(),
            event_wait: None,
            confirm_close: false,
            closing: false,
            close_sent: false,
        }
    }
}

/// A run read from its folder by `TrainingPanel::load_run`.
struct LoadedRun {
    curves: Curves,
    /// The latest checkpoint's step and the settings it was trained with.
    checkpoint: Option<(usize, anyhow::Result<TrainConfig>)>,
}

/// Builds a trainer as `roiscope train` does: the project's train split, the model folder on the
/// first device (bf16 base weights on a GPU, f32 on the CPU), fresh adapters and heads.
pub fn new_trainer(
    project: &Path,
    model: &Path,
    config: TrainConfig,
    devices: &str,
    out: &Path,
) -> anyhow::Result<Trainer> {
    let (specs, examples, folder) = load_inputs(project, model, devices, config.base_dtype)?;
    let val = load_val_examples(project)?;
    RunRecord::new(project, model, devices, &config)?.write(out)?;
    let mut trainer = Trainer::new(config, folder, examples, out, &specs)?;
    trainer.set_validation(val);
    Ok(trainer)
}

/// A new run folder under the project's `runs/`.
fn new_run_dir(project: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = project.join("runs");
    let mut dir = base.join(format!("run-{secs}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = base.join(format!("run-{secs}-{n}"));
    }
    dir
}

impl TrainingPanel {
    /// Starts a run on a worker thread. Loading the model happens there too, so a large model
    /// or a bad folder never blocks a frame; failures arrive as an error event.
    pub fn start(&mut self, ctx: &egui::Context, project: &Path, model: &Path) {
        if self.busy() {
            return;
        }
        let dir = new_run_dir(project);
        let (project, model, config, devices, out) = (
            project.to_path_buf(),
            model.to_path_buf(),
            self.config.clone(),
            self.devices.clone(),
            dir.clone(),
        );
        self.curves = Curves::default();
        self.checkpoint_step = None;
        self.log
            .push(format!("starting a run in {}", dir.display()));
        self.launch(ctx, dir, true, move || {
            config.validate()?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            new_trainer(&project, &model, config, &devices, &out)
        });
    }

    /// Continues the run shown from its latest checkpoint, with the run's own settings (as
    /// `roiscope train --resume`; the model folder and devices are the ones set here). The
    /// curves keep the run's points up to the checkpoint and the new steps join them; the events
    /// are appended to the run's `metrics.jsonl`.
    pub fn continue_run(&mut self, ctx: &egui::Context, project: &Path, model: &Path) {
        if self.busy() {
            return;
        }
        let (Some(dir), Some(step)) = (self.showing.clone(), self.checkpoint_step) else {
            return;
        };
        let (project, model, devices, run) = (
            project.to_path_buf(),
            model.to_path_buf(),
            self.devices.clone(),
            dir.clone(),
        );
        self.curves.keep_until(step);
        self.log
            .push(format!("continuing {} from step {step}", run_name(&dir)));
        self.launch(ctx, dir, false, move || {
            let base_dtype = checkpoint_config(&latest_checkpoint(&run)?)?.base_dtype;
            let (devices, examples, folder) = load_inputs(&project, &model, &devices, base_dtype)?;
            let val = load_val_examples(&project)?;
            let mut trainer = Trainer::resume(folder, examples, &run, &devices)?;
            trainer.set_validation(val);
            Ok(trainer)
        });
    }

    /// Runs the trainer that `make` builds (on the worker thread) with its events going to
    /// `dir/metrics.jsonl` and to the UI. A new run's folder is removed again if the run never
    /// started and left it empty.
    fn launch(
        &mut self,
        ctx: &egui::Context,
        dir: PathBuf,
        new: bool,
        make: impl FnOnce() -> anyhow::Result<Trainer> + Send + 'static,
    ) {
        let (control_tx, control_rx) = channel();
        let (ui_tx, ui_rx) = channel();
        let out = dir.clone();
        let ctx = ctx.clone();
        let threads = self.threads.max(1);
        std::thread::spawn(move || {
            lower_compute_priority();
            let result = (|| -> anyhow::Result<()> {
                // candle computes on the rayon pool it is called from; this one is the run's own.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("trainer-{i}"))
                    .build()?;
                pool.broadcast(|_| lower_compute_priority());
                let mut trainer = pool.install(make)?;
                let (tx, rx) = channel();
                let forward = {
                    let (ui_tx, ctx, out) = (ui_tx.clone(), ctx.clone(), out.clone());
                    std::thread::spawn(move || forward_events(rx, &out, &ui_tx, &ctx))
                };
                // The sender drops with the closure, which ends the forwarding thread.
                let run = pool.install(move || trainer.run(&tx, &control_rx));
                let _ = forward.join();
                // The trainer already reported its own failure as an event.
                run.or(Ok(()))
            })();
            if let Err(e) = result {
                if new {
                    // A run that never started leaves no folder behind (only removed when empty).
                    let _ = std::fs::remove_dir(&out);
                }
                let error = Event::Error {
                    message: format!("{e:#}"),
                };
                let _ = ui_tx.send((Instant::now(), error));
            }
            ctx.request_repaint();
        });
        self.showing = Some(dir.clone());
        self.state = RunState::Loading;
        self.run = Some(ActiveRun {
            dir,
            control: control_tx,
            events: ui_rx,
            paused: false,
            ended: false,
        });
    }

    pub fn pause_or_resume(&mut self) {
        if let Some(run) = &mut self.run {
            if run.ended {
                return;
            }
            let _ = run.control.send(if run.paused {
                Control::Resume
            } else {
                Control::Pause
            });
        }
    }

    pub fn stop(&mut self) {
        if let Some(run) = &self.run {
            if !run.ended && run.control.send(Control::Stop).is_ok() {
                self.state = RunState::Stopping;
            }
        }
    }

    /// The window's close button while a run trains: the close is held back and a dialog asks
    /// whether to stop the run (at the next step boundary, with a checkpoint) and close once it
    /// is saved, or keep training. Call once per frame.
    pub fn guard_close(&mut self, ctx: &egui::Context) {
        let requested = ctx.input(|i| i.viewport().close_requested());
        if self.closing && !self.busy() {
            // Saved (or ended): the close goes through.
            if !self.close_sent {
                self.close_sent = true;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            return;
        }
        if requested && self.busy() {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.confirm_close = true;
        }
        if !self.confirm_close || !self.busy() {
            self.confirm_close = false;
            return;
        }
        egui::Modal::new(egui::Id::unique("close-while-training")).show(ctx, |ui| {
            if self.closing {
                ui.label("Stopping the run and saving a checkpoint; the window closes when it is saved.");
                if ui
                    .button("Close now")
                    .on_hover_text("Quit without waiting: the steps since the last checkpoint are lost")
                    .clicked()
                {
                    self.run = None;
                }
            } else {
                ui.label("A run is training. Stop it at the next step and save a checkpoint, then close?");
                ui.horizontal(|ui| {
                    if ui.button("Stop, save and close").clicked() {
                        self.stop();
                        self.closing = true;
                    }
                    if ui.button("Keep training").clicked() {
                        self.confirm_close = false;
                    }
                });
            }
        });
    }

    /// Takes the worker's events; call once per frame.
    pub fn poll(&mut self) {
        let Some(run) = &mut self.run else { return };
        loop {
            match run.events.try_recv() {
                Ok((sent, event)) => {
                    let waited = sent.elapsed();
                    self.event_wait = Some(self.event_wait.map_or(waited, |w| w.max(waited)));
                    self.curves.push(&event);
                    match &event {
                        Event::Started {
                            examples,
                            total_steps,
                            devices,
                            ..
                        } => {
                            self.state = RunState::Running;
                            // The run's folder now has its metrics file: list it.
                            self.runs_of = None;
                            self.log.push(format!(
                                "{examples} examples, {total_steps} steps on {}",
                                devices.join(", ")
                            ));
                        }
                        Event::Step { .. } => {
                            if self.state == RunState::Loading {
                                self.state = RunState::Running;
                            }
                        }
                        Event::Paused { step } => {
                            run.paused = true;
                            self.state = RunState::Paused;
                            self.log.push(format!("paused at step {step}"));
                        }
                        Event::Resumed { step } => {
                            run.paused = false;
                            self.state = RunState::Running;
                            self.log.push(format!("resumed at step {step}"));
                        }
                        Event::Checkpoint { step, dir } => {
                            self.checkpoint_step = Some(*step);
                            self.log
                                .push(format!("step {step}: checkpoint {}", dir.display()));
                        }
                        Event::Validation {
                            step,
                            roi_iou,
                            match_auc,
                            best,
                            ..
                        } => {
                            let show =
                                |x: &Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
                            self.log.push(format!(
                                "step {step}: validation ROI IoU {}, match AUC {}{}",
                                show(roi_iou),
                                show(match_auc),
                                if *best { " (best so far)" } else { "" }
                            ));
                        }
                        Event::Warning { message } => self.log.push(format!("warning: {message}")),
                        Event::Stopped { step } => {
                            self.state =
                                RunState::Ended(format!("stopped and saved at step {step}"));
                        }
                        Event::Finished { step } => {
                            self.state = RunState::Ended(format!("finished after {step} steps"));
                        }
                        Event::Error { message } => {
                            self.state = RunState::Failed(message.clone());
                            self.log.push(format!("error: {message}"));
                        }
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    run.ended = true;
                    if matches!(
                        self.state,
                        RunState::Loading
                            | RunState::Running
                            | RunState::Paused
                            | RunState::Stopping
                    ) {
                        self.state = RunState::Ended("the training thread ended".into());
                    }
                    // The new run's folder joins the list.
                    self.runs_of = None;
                    break;
                }
            }
        }
    }

    /// Lists the runs again at the next [`Self::refresh_runs`] (another process may have made
    /// one: `roiscope train`).
    pub fn forget_runs(&mut self) {
        self.runs_of = None;
    }

    pub fn refresh_runs(&mut self, project: &Path) {
        if self.runs_of.as_deref() == Some(project) {
            return;
        }
        self.runs_of = Some(project.to_path_buf());
        let mut runs: Vec<PathBuf> = std::fs::read_dir(project.join("runs"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("metrics.jsonl").is_file())
                    .collect()
            })
            .unwrap_or_default();
        runs.sort();
        runs.reverse();
        self.runs = runs;
    }

    /// Reads the curves of `run` and its latest checkpoint's settings on a worker thread (10,000
    /// steps take tens of milliseconds, too long for one frame); `poll_loading` shows them when
    /// they arrive.
    pub fn load_run(&mut self, ctx: &egui::Context, run: PathBuf) {
        let (tx, rx) = channel();
        let ctx = ctx.clone();
        let dir = run.clone();
        std::thread::spawn(move || {
            let loaded = Curves::from_metrics(&dir.join("metrics.jsonl")).map(|curves| {
                let checkpoint = latest_checkpoint(&dir).ok().and_then(|ckpt| {
                    checkpoint_step(&ckpt).map(|step| (step, checkpoint_config(&ckpt)))
                });
                LoadedRun { curves, checkpoint }
            });
            let _ = tx.send(loaded);
            ctx.request_repaint();
        });
        self.loading = Some((run, rx));
    }

    fn poll_loading(&mut self) {
        let Some((run, rx)) = &self.loading else {
            return;
        };
        let result = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                Err(anyhow::anyhow!("reading the run's curves failed"))
            }
        };
        let run = run.clone();
        self.loading = None;
        // A run started meanwhile keeps its own curves.
        if self.busy() {
            return;
        }
        match result {
            Ok(loaded) => {
                if loaded.curves.unreadable_lines > 0 {
                    self.log.push(format!(
                        "{} lines of {} could not be read (cut short by a crash?)",
                        loaded.curves.unreadable_lines,
                        run.join("metrics.jsonl").display()
                    ));
                }
                self.curves = loaded.curves;
                self.checkpoint_step = loaded.checkpoint.as_ref().map(|(step, _)| *step);
                self.view_x = None;
                // The form shows the settings the run was trained with (Continue uses them;
                // Start begins a new run with them unless they are changed).
                match loaded.checkpoint.map(|(_, config)| config) {
                    Some(Ok(config)) => {
                        self.config = config;
                        self.log.push(format!(
                            "the settings of {} are in the form",
                            run_name(&run)
                        ));
                    }
                    Some(Err(e)) => self.log.push(format!("{e:#}")),
                    None => {}
                }
                self.showing = Some(run);
            }
            Err(e) => self.log.push(format!("{e:#}")),
        }
    }

    pub fn busy(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.ended)
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        project: Option<&Path>,
        model_folder: &mut String,
        smoothing: &mut f64,
    ) {
        self.poll();
        self.poll_loading();
        if let Some(p) = project {
            self.refresh_runs(p);
        }
        egui::Panel::left("train-settings")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .show(ui, |ui| self.settings_ui(ui, project, model_folder));
            });
        egui::CentralPanel::default().show(ui, |ui| self.plots_ui(ui, smoothing));
    }

    fn settings_ui(&mut self, ui: &mut Ui, project: Option<&Path>, model_folder: &str) {
        ui.heading("Training");
        let busy = self.busy();
        // The model folder (Browse, check, demo model) is the row above the tab: model_folder.rs.
        ui.horizontal(|ui| {
            let label = ui.label("Devices");
            ui.add_enabled(!busy, egui::TextEdit::singleline(&mut self.devices).desired_width(120.0))
                .labelled_by(label.id)
                .on_hover_text("One replica per device: cpu, cuda:0, cuda:0,1 (data parallel); cpu,cpu runs two CPU replicas");
            ui.label(RichText::new(format!("found: {}", devices_found())).small());
        });
        ui.horizontal(|ui| {
            let label = ui.label("CPU threads");
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            ui.add_enabled(!busy, egui::DragValue::new(&mut self.threads).range(1..=cores))
                .labelled_by(label.id)
                .on_hover_text("Threads the trainer computes on; by default all cores but one, so the window stays responsive while a run trains");
        });
        ui.add_enabled_ui(!busy, |ui| config_ui(ui, &mut self.config));
        ui.separator();
        let why_not = super::model_folder::why_not_start(busy, project, model_folder);
        ui.horizontal(|ui| {
            let can_start = why_not.is_none();
            if ui
                .add_enabled(can_start, egui::Button::new("Start"))
                .on_hover_text("Start a new run on the project's train split; metrics and checkpoints go to PROJECT/runs/")
                .on_disabled_hover_text("Open a project and give a model folder; one run at a time")
                .clicked()
            {
                if let Some(p) = project {
                    self.start(ui.ctx(), p, Path::new(model_folder.trim()));
                }
            }
            let paused = self.run.as_ref().is_some_and(|r| r.paused);
            if ui
                .add_enabled(busy, egui::Button::new(if paused { "Resume" } else { "Pause" }))
                .on_hover_text("Pause between batches, or resume")
                .clicked()
            {
                self.pause_or_resume();
            }
            if ui
                .add_enabled(busy, egui::Button::new("Stop and save"))
                .on_hover_text("Save a checkpoint at the next step boundary and end the run")
                .clicked()
            {
                self.stop();
            }
        });
        if let Some(why) = &why_not {
            ui.label(RichText::new(why).color(egui::Color32::from_rgb(240, 170, 60)));
        }
        let (text, colour) = match &self.state {
            RunState::Idle => ("idle".to_string(), egui::Color32::GRAY),
            RunState::Loading => ("loading the model…".to_string(), egui::Color32::LIGHT_BLUE),
            RunState::Running => ("running".to_string(), egui::Color32::LIGHT_GREEN),
            RunState::Paused => ("paused".to_string(), egui::Color32::YELLOW),
            RunState::Stopping => (
                "stopping: saving a checkpoint…".to_string(),
                egui::Color32::YELLOW,
            ),
            RunState::Ended(s) => (s.clone(), egui::Color32::LIGHT_GREEN),
            RunState::Failed(e) => (
                format!("failed: {e}"),
                egui::Color32::from_rgb(255, 120, 120),
            ),
        };
        ui.label(RichText::new(text).color(colour));
        ui.separator();
        ui.label(RichText::new("Runs").strong());
        if self.runs.is_empty() {
            ui.label(RichText::new("no runs in this project yet").small());
        }
        if let Some((run, _)) = &self.loading {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("reading {}", run.display()));
            });
        }
        let mut load = None;
        for run in &self.runs {
            let name = run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let shown = self.showing.as_deref() == Some(run.as_path());
            if ui
                .selectable_label(shown, &name)
                .on_hover_text("Show this run's curves (from its metrics.jsonl)")
                .clicked()
            {
                load = Some(run.clone());
            }
        }
        if let Some(run) = load {
            if !self.busy() {
                self.load_run(ui.ctx(), run);
            } else {
                self.log
                    .push("a run is in progress; its curves stay on screen".into());
            }
        }
        // A stopped run goes on from its latest checkpoint; a finished one has nothing left.
        let resumable = self
            .checkpoint_step
            .is_some_and(|s| self.curves.total_steps == 0 || s < self.curves.total_steps);
        let can_continue = !self.busy()
            && self.showing.is_some()
            && resumable
            && project.is_some()
            && !model_folder.trim().is_empty();
        let continue_tip = match self.checkpoint_step {
            Some(s) => format!(
                "Continue the run shown from its checkpoint at step {s}, with its own settings \
                 (as `roiscope train --resume`); its curves stay and the new steps join them"
            ),
            None => "Continue the run shown from its latest checkpoint".into(),
        };
        if ui
            .add_enabled(can_continue, egui::Button::new("Continue run"))
            .on_hover_text(continue_tip)
            .on_disabled_hover_text(
                "Show a stopped run that has a checkpoint (click it in the list) and give a \
                 model folder; one run at a time",
            )
            .clicked()
        {
            if let Some(p) = project {
                self.continue_run(ui.ctx(), p, Path::new(model_folder.trim()));
            }
        }
        ui.separator();
        for line in self.log.iter().rev().take(8) {
            ui.label(RichText::new(line).small());
        }
    }

    fn plots_ui(&mut self, ui: &mut Ui, smoothing: &mut f64) {
        let c = &self.curves;
        let step = c.steps.last().copied().unwrap_or(0.0);
        let fraction = if c.total_steps > 0 {
            step as f32 / c.total_steps as f32
        } else {
            0.0
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .show_percentage()
                .text(format!(
                    "step {step:.0} of {} · {} · {:.2} samples/s",
                    c.total_steps,
                    // An ETA only while the run goes on: a stopped or finished run has none.
                    match &self.state {
                        RunState::Running | RunState::Paused | RunState::Loading =>
                            format!("ETA {}", format_eta(c.eta_seconds)),
                        RunState::Stopping => "stopping".into(),
                        RunState::Ended(s) => s.clone(),
                        RunState::Failed(_) => "failed".into(),
                        RunState::Idle => "not running".into(),
                    },
                    c.samples_per_second
                )),
        )
        .on_hover_text("Progress of the run shown below");
        ui.horizontal(|ui| {
            ui.add(egui::Slider::new(smoothing, 0.0..=0.99).text("smoothing"))
                .on_hover_text("Exponential moving average of the curves (0: raw values)");
            ui.label(format!("{} points per curve", c.len()));
        });
        let s = *smoothing;
        let rows = if c.val.steps.is_empty() { 2.0 } else { 3.0 };
        let height = ((ui.available_height() - 20.0) / rows).max(120.0);
        let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
        // About a bucket per pixel column over what is in view; see `thin`.
        let (view, buckets) = (self.view_x, (width * ui.pixels_per_point()) as usize);
        let series = |v: &[f64], alpha: f64| -> PlotPoints<'static> {
            thin(&smooth(&c.steps, v, alpha), view, buckets).into()
        };
        let group = ui.make_persistent_id("train-plots");
        let plot = |id: &str, title: &str| {
            Plot::new(id.to_string())
                .height(height)
                .width(width)
                .legend(Legend::default())
                .link_axis(group, [true, false])
                .x_axis_label("step")
                .y_axis_label(title.to_string())
        };
        // The x axes are linked: any plot's range is the range of all.
        let mut seen = None;
        let mut note = |r: &egui_plot::PlotResponse<()>| {
            let b = r.transform.bounds();
            seen = Some((b.min()[0], b.max()[0]));
        };
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.label(RichText::new("Raw loss per task").strong())
                    .on_hover_text("L_i for roi, match and lm");
                note(&plot("raw", "loss").show(ui, |p| {
                    for (i, t) in TASKS.iter().enumerate() {
                        p.line(Line::new(*t, series(&c.loss[i], s)));
                    }
                }));
            });
            ui.vertical(|ui| {
                ui.label(RichText::new("Weighted terms and total").strong())
                    .on_hover_text("0.5 exp(-s_i) L_i + 0.5 s_i per task, and their sum");
                plot("weighted", "term").show(ui, |p| {
                    for (i, t) in TASKS.iter().enumerate() {
                        p.line(Line::new(
                            format!("{t} weighted"),
                            series(&c.weighted[i], s),
                        ));
                    }
                    p.line(Line::new("total", series(&c.total, s)).width(2.5));
                });
            });
        });
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.label(RichText::new("Learned task weights exp(-s_i)").strong())
                    .on_hover_text(
                        "How much each task counts; learned with the uncertainty weighting",
                    );
                plot("precision", "exp(-s)").show(ui, |p| {
                    for (i, t) in TASKS.iter().enumerate() {
                        p.line(Line::new(format!("{t} weight"), series(&c.precision[i], s)));
                    }
                });
            });
            ui.vertical(|ui| {
                ui.label(RichText::new("Learning rate").strong())
                    .on_hover_text("LoRA and heads parameter groups (warmup, cosine)");
                plot("lr", "lr").show(ui, |p| {
                    p.line(Line::new("lr lora", series(&c.lr_lora, 0.0)));
                    p.line(Line::new("lr heads", series(&c.lr_heads, 0.0)));
                });
            });
        });
        if !c.val.steps.is_empty() {
            let v = &c.val;
            // Few points (one per validation): drawn as they are, with markers.
            let points = |ys: &[f64]| -> Vec<[f64; 2]> {
                v.steps
                    .iter()
                    .zip(ys)
                    .filter(|(_, y)| y.is_finite())
                    .map(|(&x, &y)| [x, y])
                    .collect()
            };
            ui.horizontal(|ui| {
                ui.vertical(|ui| {
                    ui.label(RichText::new("Validation loss per task").strong())
                        .on_hover_text("Raw L_i on the val split's fixed pairs");
                    plot("val-loss", "val loss").show(ui, |p| {
                        for (i, t) in TASKS.iter().enumerate() {
                            let pts = points(&v.loss[i]);
                            p.line(Line::new(format!("val {t}"), PlotPoints::from(pts.clone())));
                            p.points(egui_plot::Points::new(format!("val {t}"), pts).radius(3.0));
                        }
                    });
                });
                ui.vertical(|ui| {
                    ui.label(RichText::new("Validation ROI mean IoU and match AUC").strong())
                        .on_hover_text(
                            "On the val split; the best by best_metric keeps its checkpoint",
                        );
                    plot("val-metrics", "value").show(ui, |p| {
                        for (name, ys) in
                            [("ROI mean IoU", &v.roi_iou), ("match AUC", &v.match_auc)]
                        {
                            let pts = points(ys);
                            p.line(Line::new(name, PlotPoints::from(pts.clone())));
                            p.points(egui_plot::Points::new(name, pts).radius(3.0));
                        }
                    });
                });
            });
        }
        self.view_x = seen.filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo < hi);
    }
}

/// The training settings, each with its tooltip.
fn config_ui(ui: &mut Ui, c: &mut TrainConfig) {
    egui::Grid::new("train-config").num_columns(2).striped(true).show(ui, |ui| {
        let usize_row = |ui: &mut Ui, name: &str, v: &mut usize, min: usize, tip: &str| {
            ui.label(name).on_hover_text(tip);
            ui.add(egui::DragValue::new(v).range(min..=1_000_000)).on_hover_text(tip);
            ui.end_row();
        };
        usize_row(ui, "epochs", &mut c.epochs, 1, "Passes over the train split");
        usize_row(ui, "max steps", &mut c.max_steps, 0, "Stop after this many optimiser steps (0: all epochs)");
        usize_row(ui, "batch size", &mut c.batch_size, 1, "Samples per batch, all devices together");
        usize_row(ui, "accumulation", &mut c.grad_accum, 1, "Batches per optimiser step (gradient accumulation)");
        usize_row(ui, "warmup steps", &mut c.warmup_steps, 0, "Linear warmup before the cosine schedule");
        usize_row(ui, "LoRA r", &mut c.lora_r, 1, "Rank of the LoRA adapters");
        usize_row(ui, "checkpoint every", &mut c.checkpoint_every, 0, "Steps between checkpoints (0: not by steps); the newest keep_checkpoints are kept");
        usize_row(ui, "validate every", &mut c.validate_every, 0, "Steps between validations on the val split (0: never); also at the end");
        let f64_row = |ui: &mut Ui, name: &str, v: &mut f64, speed: f64, tip: &str| {
            ui.label(name).on_hover_text(tip);
            ui.add(egui::DragValue::new(v).speed(speed).max_decimals(6)).on_hover_text(tip);
            ui.end_row();
        };
        f64_row(ui, "LoRA alpha", &mut c.lora_alpha, 1.0, "LoRA scaling numerator (scale = alpha / r)");
        f64_row(ui, "LoRA dropout", &mut c.lora_dropout, 0.01, "Dropout on the LoRA input");
        f64_row(ui, "lr LoRA", &mut c.lr_lora, 1e-5, "Learning rate of the LoRA adapters");
        f64_row(ui, "lr heads", &mut c.lr_heads, 1e-4, "Learning rate of the ROI and match heads and task weights");
        f64_row(ui, "negative ratio", &mut c.negative_ratio, 0.01, "Expected share of each batch paired with another record's image");
        f64_row(ui, "missed-diagnosis weight", &mut c.missed_diagnosis_weight, 0.5, "Focal-loss weight of true pairs scored under 0.5");
        f64_row(ui, "focal alpha", &mut c.focal_alpha, 0.01, "Focal loss alpha (weight of positives)");
        f64_row(ui, "focal gamma", &mut c.focal_gamma, 0.1, "Focal loss gamma (focus on hard examples)");
        f64_row(ui, "ROI focus weight", &mut c.roi_focus_weight, 0.1, "Weight of the focus loss: where the ROI pooling looks, against the image tokens inside the box");
        for (name, v, tip) in [
            ("train ROI head", &mut c.train_roi, "Off: no ROI loss (ablation presets sft, sft-roi)"),
            ("train match head", &mut c.train_match, "Off: no match loss (set negative ratio to 0 too, as the sft presets do)"),
            ("learn task weights", &mut c.learn_task_weights, "Off: every task weighted 0.5 (preset multitask-fixed)"),
        ] {
            ui.label(name).on_hover_text(tip);
            ui.checkbox(v, "").on_hover_text(tip);
            ui.end_row();
        }
        ui.label("LoRA targets").on_hover_text("Linear layers that get adapters, comma-separated");
        let mut targets = c.lora_targets.join(",");
        if ui
            .add(egui::TextEdit::singleline(&mut targets).desired_width(160.0))
            .on_hover_text("Linear layers that get adapters, comma-separated (q_proj, v_proj, gate_proj, ...)")
            .changed()
        {
            c.lora_targets = targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
        }
        ui.end_row();
        ui.label("hard negatives").on_hover_text("Draw negatives of the same modality/organ with another diagnosis");
        ui.checkbox(&mut c.hard_negatives, "").on_hover_text("Draw negatives of the same modality/organ with another diagnosis");
        ui.end_row();
        let tip = "Dtype of the frozen base weights: bf16 halves their memory (on the CPU each \
                   matrix is widened to f32 for its product); auto is bf16 on a GPU, f32 on the CPU";
        ui.label("base weights").on_hover_text(tip);
        egui::ComboBox::from_id_salt("base-dtype")
            .selected_text(c.base_dtype.name())
            .show_ui(ui, |ui| {
                for d in BaseDtype::ALL {
                    ui.selectable_value(&mut c.base_dtype, d, d.name());
                }
            })
            .response
            .on_hover_text(tip);
        ui.end_row();
        let tip = "Activation recompute: keep only each layer's input through the forward pass \
                   and compute the layer again in backward (a third more compute, a fraction of \
                   the memory); auto: on for models of 1B parameters or more";
        ui.label("recompute").on_hover_text(tip);
        let name = |r: Option<bool>| match r {
            None => "auto",
            Some(true) => "on",
            Some(false) => "off",
        };
        egui::ComboBox::from_id_salt("recompute")
            .selected_text(name(c.recompute))
            .show_ui(ui, |ui| {
                for r in [None, Some(true), Some(false)] {
                    ui.selectable_value(&mut c.recompute, r, name(r));
                }
            })
            .response
            .on_hover_text(tip);
        ui.end_row();
    });
}

/// Lowers the calling thread's scheduling priority so that the window's threads (and the
/// compositor's and software rasteriser's) go first: called on the trainer thread and on each
/// thread of the rayon pool candle computes on. On Linux the thread joins SCHED_IDLE, where it
/// runs when no ordinary thread wants the core and a waking UI thread preempts it at once; at
/// nice 10 alone frames still waited up to 149 ms behind it on two cores (BENCHMARKS.md). Where
/// SCHED_IDLE is refused, nice 10 stays. Without privileges a thread cannot raise its priority
/// again, so the pool keeps it for its life.
fn lower_compute_priority() {
    // On Linux, PRIO_PROCESS and sched_setscheduler with 0 mean the calling thread.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// A run folder's name, for the log.
fn run_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// All cores but one, at least one.
pub fn default_trainer_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

fn devices_found() -> String {
    // CUDA devices are only visible in a build with the cuda feature.
    if cfg!(feature = "cuda") {
        "cpu, cuda (see --devices)".into()
    } else {
        format!(
            "cpu ({} cores)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    }
}

fn format_eta(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        return "-".into();
    }
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `(x, y)` pairs with an exponential moving average of `y` (`alpha` 0: raw).
pub fn smooth(x: &[f64], y: &[f64], alpha: f64) -> Vec<[f64; 2]> {
    let mut acc: Option<f64> = None;
    x.iter()
        .zip(y)
        .filter(|(_, v)| v.is_finite())
        .map(|(x, &v)| {
            let s = match acc {
                Some(a) => alpha * a + (1.0 - alpha) * v,
                None => v,
            };
            acc = Some(s);
            [*x, s]
        })
        .collect()
}

/// Writes each event to the metrics file (with a time stamp, as `roiscope train` does) and hands
/// it to the UI, waking it.
fn forward_events(
    rx: Receiver<Event>,
    run: &Path,
    ui: &Sender<(Instant, Event)>,
    ctx: &egui::Context,
) {
    let warn = |message: String| {
        let _ = ui.send((Instant::now(), Event::Warning { message }));
    };
    // A file that cannot be written must not stop the run; the UI still gets the events, and a
    // warning says once that the log stopped.
    let mut metrics = MetricsWriter::open(run)
        .map_err(|e| warn(format!("{e:#}; the run goes on without logging its events")))
        .ok();
    for event in rx {
        if let Some(message) = metrics.as_mut().and_then(|m| m.write(&event)) {
            warn(message);
        }
        if ui.send((Instant::now(), event)).is_err() {
            break;
        }
        ctx.request_repaint();
    }
}

#[cfg(test)]
mod tests {
    /// The trainer's threads give way to the window: SCHED_IDLE and nice 10, on a thread of its
    /// own (the calling thread's priority never comes back).
    #[cfg(target_os = "linux")]
    #[test]
    fn compute_threads_run_under_sched_idle_at_nice_10() {
        let (policy, nice) = std::thread::spawn(|| {
            super::lower_compute_priority();
            unsafe {
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(nice, 10);
    }
}
