//! The training dashboard. The run itself is `train::run::TrainingRun` (the same one
//! `roiscope train` starts: folder, record, metrics file, thread, controls); this panel only
//! shows its events and sends it the window's commands (Start, Continue, Pause, Stop, pushed by
//! the form and drained once per frame). The UI takes the events each frame and never waits.
//! Earlier runs are listed from their `metrics.jsonl` and their curves restored; a listed run
//! with a checkpoint can be continued (as `roiscope train --resume`), its curves growing on.
//!
//! - [`form`]: the left panel (settings, buttons, status, runs);
//! - [`plots`]: the curves;
//! - [`curves`]: the curves' data, from events or a metrics file.

mod curves;
mod form;
mod plots;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the runs list is read again from the project's `runs/`.
const RELIST: Duration = Duration::from_secs(2);

use egui::Ui;

pub use self::curves::{smooth, Curves, ValCurves};
use super::Command;
use crate::train::run::{Options, Plan, TrainingRun};
use crate::train::trainer::{
    checkpoint_config, checkpoint_step, latest_checkpoint, Control, Event, TrainConfig,
};

/// A run in progress (or just ended), as the dashboard follows it.
pub struct ActiveRun {
    pub run: TrainingRun,
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
    /// The window's context (from the last frame), woken by the run's events.
    ctx: Option<egui::Context>,
    /// When the runs list was last read.
    runs_listed: Option<Instant>,
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
            ctx: None,
            runs_listed: None,
        }
    }
}

/// A run read from its folder by `TrainingPanel::load_run`.
struct LoadedRun {
    curves: Curves,
    /// The latest checkpoint's step and the settings it was trained with.
    checkpoint: Option<(usize, anyhow::Result<TrainConfig>)>,
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
    /// Starts a new run (as `roiscope train`: the project's train split, the model folder,
    /// the form's settings) in a new folder under the project's `runs/`. The model loads on the
    /// run's thread, so a large model or a bad folder never blocks a frame; failures arrive as
    /// an error event.
    pub fn start(&mut self, project: &Path, model: &Path) {
        if self.busy() {
            return;
        }
        let dir = new_run_dir(project);
        self.curves = Curves::default();
        self.checkpoint_step = None;
        self.log
            .push(format!("starting a run in {}", dir.display()));
        self.launch(Plan::New {
            project: project.to_path_buf(),
            model: model.to_path_buf(),
            devices: self.devices.clone(),
            config: self.config.clone(),
            out: dir,
        });
    }

    /// Continues the run shown from its latest checkpoint, with the run's own settings (as
    /// `roiscope train --resume`; the model folder and devices are the ones set here). The
    /// curves keep the run's points up to the checkpoint and the new steps join them; the events
    /// are appended to the run's `metrics.jsonl`.
    pub fn continue_run(&mut self, project: &Path, model: &Path) {
        if self.busy() {
            return;
        }
        let (Some(dir), Some(step)) = (self.showing.clone(), self.checkpoint_step) else {
            return;
        };
        self.curves.keep_until(step);
        self.log
            .push(format!("continuing {} from step {step}", run_name(&dir)));
        self.launch(Plan::Resume {
            run: dir,
            project: Some(project.to_path_buf()),
            model: Some(model.to_path_buf()),
            devices: Some(self.devices.clone()),
            config: None,
            max_steps: None,
        });
    }

    /// Follows `plan`'s run, computing below the window's threads on the form's thread count.
    fn launch(&mut self, plan: Plan) {
        let options = Options {
            threads: Some(self.threads.max(1)),
            background: true,
        };
        let ctx = self.ctx.clone();
        let run = TrainingRun::start(plan, options, move || {
            if let Some(ctx) = &ctx {
                ctx.request_repaint();
            }
        });
        self.showing = Some(run.dir().to_path_buf());
        self.state = RunState::Loading;
        self.run = Some(ActiveRun {
            run,
            paused: false,
            ended: false,
        });
    }

    pub fn pause_or_resume(&mut self) {
        if let Some(run) = &mut self.run {
            if run.ended {
                return;
            }
            run.run.send(if run.paused {
                Control::Resume
            } else {
                Control::Pause
            });
        }
    }

    pub fn stop(&mut self) {
        if let Some(run) = &self.run {
            if !run.ended && run.run.send(Control::Stop) {
                self.state = RunState::Stopping;
            }
        }
    }

    /// The window's close button while a run trains: the close is held back and a dialog asks
    /// whether to stop the run (at the next step boundary, with a checkpoint) and close once it
    /// is saved, or keep training. Call once per frame.
    pub fn guard_close(&mut self, ctx: &egui::Context, commands: &mut Vec<Command>) {
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
                        commands.push(Command::StopTraining);
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
            match run.run.try_event() {
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
        // Another process (`roiscope train`) may start a run at any time: listed again every
        // RELIST while the tab is shown.
        let fresh = self.runs_listed.is_some_and(|t| t.elapsed() < RELIST);
        if self.runs_of.as_deref() == Some(project) && fresh {
            return;
        }
        self.runs_of = Some(project.to_path_buf());
        self.runs_listed = Some(Instant::now());
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
        commands: &mut Vec<Command>,
    ) {
        self.ctx = Some(ui.ctx().clone());
        ui.ctx().request_repaint_after(RELIST);
        self.poll();
        self.poll_loading();
        if let Some(p) = project {
            self.refresh_runs(p);
        }
        egui::Panel::left("train-settings")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.settings_ui(ui, project, model_folder, commands)
                });
            });
        egui::CentralPanel::default().show(ui, |ui| self.plots_ui(ui, smoothing));
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
