//! The pre-annotation section of the Batch tab: locate -> diagnose -> verify over the records
//! the list shows (its filters) or a split, on a worker ([`crate::infer::preannotate`]), with
//! progress, Cancel, and Resume for a run that did not reach all its records. What the model
//! says is stored with the run; the list's "predicted", "unverified", "box far off" filters and
//! its "by model doubt" order read it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};

use candle_core::Device;
use egui::{RichText, Ui};

use super::task::Task;
use super::Command;
use crate::data::store::{PreannotationRun, Split};
use crate::infer::preannotate::{preannotate, Finished, PreannotateRequest, Step};
use crate::model::quantized::WeightFormat;

/// Which records a new run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The records the list shows now, in its order.
    #[default]
    Filtered,
    Split(Split),
}

/// The model the Batch tab runs: what pre-annotation and evaluation both use.
#[derive(Debug, Clone)]
pub struct ModelChoice {
    pub folder: PathBuf,
    pub checkpoint: PathBuf,
    pub weights: WeightFormat,
    pub max_new_tokens: usize,
}

/// A pass of a run on its worker.
pub struct Job {
    pub run_id: i64,
    project: PathBuf,
    task: Task<Finished>,
    steps: Receiver<Step>,
}

impl Job {
    pub fn start(req: PreannotateRequest, repaint: Option<egui::Context>) -> Job {
        let (tx, steps) = channel();
        let (run_id, project) = (req.run_id, req.project.clone());
        let ctx = repaint.clone();
        let task = Task::spawn("preannotate", repaint, move |progress| {
            preannotate(&req, &Device::Cpu, &progress.cancel, |step| {
                match &step {
                    Step::Started { done, total, .. } => progress.set(*done, *total),
                    Step::Record { done, total, .. } => progress.set(*done, *total),
                }
                // The panel may be gone; the run still stores its records.
                let _ = tx.send(step);
                if let Some(ctx) = &ctx {
                    ctx.request_repaint();
                }
            })
        });
        Job {
            run_id,
            project,
            task,
            steps,
        }
    }

    pub fn cancel(&self) {
        self.task.cancel();
    }

    /// The project the run writes to.
    pub fn project(&self) -> &Path {
        &self.project
    }

    /// The records stored since the last poll, and the pass's end once it came.
    pub fn poll(&mut self) -> (Vec<i64>, Option<Result<Finished, String>>) {
        // The end first: every step was sent before it, so draining after it misses none.
        let ended = self.task.poll();
        let mut stored = Vec::new();
        while let Ok(step) = self.steps.try_recv() {
            if let Step::Record { record_id, .. } = step {
                stored.push(record_id);
            }
        }
        (stored, ended)
    }
}

pub struct PreannotatePanel {
    pub scope: Scope,
    /// A run folder (its latest checkpoint) or a checkpoint folder; empty: the latest run.
    pub checkpoint: String,
    pub weights: WeightFormat,
    pub max_new_tokens: usize,
    pub job: Option<Job>,
    /// The project's runs, newest first (read again when a pass ends or a project opens).
    pub runs: Vec<PreannotationRun>,
    /// The last pass's end, in words, and whether it is an error.
    pub note: Option<(String, bool)>,
}

impl Default for PreannotatePanel {
    fn default() -> Self {
        PreannotatePanel {
            scope: Scope::Filtered,
            checkpoint: String::new(),
            weights: WeightFormat::F32,
            max_new_tokens: 128,
            job: None,
            runs: Vec::new(),
            note: None,
        }
    }
}

impl PreannotatePanel {
    pub fn busy(&self) -> bool {
        self.job.is_some()
    }

    /// The checkpoint to use: the one typed, else the project's latest training run.
    pub fn checkpoint_or(&self, latest: Option<&Path>) -> Option<PathBuf> {
        match self.checkpoint.trim() {
            "" => latest.map(Path::to_path_buf),
            typed => Some(PathBuf::from(typed)),
        }
    }

    /// In words, how a pass ended; `errors`: the run's records the model failed on, this pass
    /// and earlier ones.
    pub fn ended(run_id: i64, result: &Result<Finished, String>, errors: usize) -> (String, bool) {
        match result {
            Ok(f) => {
                let failed = if errors > 0 {
                    format!("; the model failed on {errors} (filter \"prediction failed\")")
                } else {
                    String::new()
                };
                let what = if f.cancelled { "cancelled" } else { "finished" };
                (
                    format!(
                        "pre-annotation run {run_id} {what}: {} of {} records{failed}",
                        f.done, f.total
                    ),
                    false,
                )
            }
            Err(e) => (format!("pre-annotation run {run_id} stopped: {e}"), true),
        }
    }

    /// The model settings both pre-annotation and evaluation use; `latest`: the latest
    /// training run, the default checkpoint.
    pub fn model_ui(&mut self, ui: &mut Ui, latest: Option<&Path>) {
        ui.horizontal(|ui| {
            let label = ui.label("Checkpoint");
            let hint = latest.map_or("RUN_DIR or checkpoint folder".into(), |p| {
                format!("latest run: {}", p.display())
            });
            ui.add(
                egui::TextEdit::singleline(&mut self.checkpoint)
                    .hint_text(hint)
                    .desired_width(360.0),
            )
            .labelled_by(label.id)
            .on_hover_text("A training run folder (its latest checkpoint) or a checkpoint folder");
        });
        ui.horizontal(|ui| {
            super::predict::weights_ui(ui, "preannotate-weights", &mut self.weights);
            let label = ui.label("Max tokens");
            ui.add(egui::DragValue::new(&mut self.max_new_tokens).range(1..=1024))
                .labelled_by(label.id)
                .on_hover_text("The most tokens generated per diagnosis");
        });
    }

    /// The model to run, or why there is none (`model`: the Training tab's model folder).
    pub fn choice(&self, model: &str, latest: Option<&Path>) -> Result<ModelChoice, &'static str> {
        if model.trim().is_empty() {
            return Err("set the model folder in the Training tab");
        }
        let checkpoint = self
            .checkpoint_or(latest)
            .ok_or("no checkpoint: train a run first, or type a checkpoint folder")?;
        Ok(ModelChoice {
            folder: PathBuf::from(model.trim()),
            checkpoint,
            weights: self.weights,
            max_new_tokens: self.max_new_tokens,
        })
    }

    /// `filtered`: how many records the list shows; `model`: why no model can run, if so.
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        filtered: usize,
        model: Option<&str>,
        commands: &mut Vec<Command>,
    ) {
        ui.heading("Pre-annotation");
        ui.label(
            "Run locate -> diagnose -> verify on many records; the boxes and verdicts are \
             stored with the run. Review them in the Review tab: filter by \"predicted\", \
             \"unverified\" or \"box far off\", and sort \"by model doubt\".",
        );
        ui.horizontal(|ui| {
            let label = ui.label("Records");
            egui::ComboBox::from_id_salt("preannotate-scope")
                .selected_text(scope_name(self.scope, filtered))
                .show_ui(ui, |ui| {
                    let f = Scope::Filtered;
                    ui.selectable_value(&mut self.scope, f, scope_name(f, filtered));
                    for s in Split::ALL {
                        let s = Scope::Split(s);
                        ui.selectable_value(&mut self.scope, s, scope_name(s, filtered));
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text("The records the Review tab's list shows now, or a whole split");
        });
        let model_ready = model.is_none();
        let why_not = if let Some(why) = model {
            Some(why)
        } else if self.scope == Scope::Filtered && filtered == 0 {
            Some("the list shows no records")
        } else if self.busy() {
            Some("a pre-annotation is running")
        } else {
            None
        };
        ui.horizontal(|ui| {
            if ui
                .add_enabled(why_not.is_none(), egui::Button::new("Pre-annotate"))
                .on_hover_text("Start a new run over these records")
                .clicked()
            {
                commands.push(Command::Preannotate);
            }
            if let Some(job) = &self.job {
                let cancelling = job.task.cancelling();
                if ui
                    .add_enabled(!cancelling, egui::Button::new("Cancel"))
                    .on_hover_text("Stop after the record in flight; Resume goes on from there")
                    .clicked()
                {
                    commands.push(Command::CancelPreannotation);
                }
                let (done, total) = job.task.counts();
                ui.add(
                    egui::ProgressBar::new(job.task.fraction())
                        .desired_width(260.0)
                        .text(format!(
                            "run {}: {done} of {total}{}",
                            job.run_id,
                            if cancelling { " (cancelling…)" } else { "" }
                        )),
                );
            }
        });
        if let Some(why) = why_not.filter(|_| !self.busy()) {
            ui.label(RichText::new(format!("Pre-annotate is off: {why}")).small());
        }
        if let Some((note, error)) = &self.note {
            ui.label(if *error {
                RichText::new(note).color(egui::Color32::from_rgb(255, 120, 120))
            } else {
                RichText::new(note)
            });
        }
        self.runs_ui(ui, model_ready, commands);
    }

    fn runs_ui(&mut self, ui: &mut Ui, model_ready: bool, commands: &mut Vec<Command>) {
        if self.runs.is_empty() {
            ui.label(RichText::new("no pre-annotation runs in this project yet").small());
            return;
        }
        egui::Grid::new("preannotation-runs")
            .striped(true)
            .show(ui, |ui| {
                for run in &self.runs {
                    // The running pass's count is newer than the one read from the store.
                    let done = match &self.job {
                        Some(job) if job.run_id == run.id => job.task.counts().0.max(run.done),
                        _ => run.done,
                    };
                    ui.label(format!("run {}", run.id));
                    ui.label(&run.scope);
                    ui.label(format!(
                        "{} of {} done{}",
                        done,
                        run.record_ids.len(),
                        if run.errors > 0 {
                            format!(", {} failed", run.errors)
                        } else {
                            String::new()
                        }
                    ));
                    ui.label(RichText::new(&run.checkpoint).small())
                        .on_hover_text(format!("model {}; started {}", run.model, run.started_at));
                    if run.pending() > 0 {
                        let idle = self.job.is_none() && model_ready;
                        if ui
                            .add_enabled(idle, egui::Button::new(format!("Resume run {}", run.id)))
                            .on_hover_text("Run the records this run has not reached yet")
                            .on_disabled_hover_text(
                                "One pre-annotation at a time, with a model folder set",
                            )
                            .clicked()
                        {
                            commands.push(Command::ResumePreannotation(run.id));
                        }
                    } else {
                        ui.label("");
                    }
                    ui.end_row();
                }
            });
    }
}

fn scope_name(scope: Scope, filtered: usize) -> String {
    match scope {
        Scope::Filtered => format!("the {filtered} records the list shows"),
        Scope::Split(s) => format!("the {} split", s.as_str()),
    }
}
