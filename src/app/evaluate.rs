//! The Evaluate section of the Batch tab: `roiscope eval`'s engine
//! ([`crate::eval::evaluate::evaluate`]) on a split with a checkpoint, on a worker, with
//! progress and Cancel; when it ends the report's numbers are shown here and report.html is
//! opened in the browser (or with the "Open report" button).

use std::path::{Path, PathBuf};

use candle_core::Device;
use egui::{RichText, Ui};

use super::preannotate::ModelChoice;
use super::task::Task;
use super::Command;
use crate::data::store::Split;
use crate::eval::evaluate::{evaluate, EvalRequest, Evaluation};

pub struct EvalPanel {
    pub split: Split,
    pub calibrate: bool,
    pub target_sensitivity: f64,
    /// At most this many records (0: all).
    pub limit: usize,
    /// Open report.html in the browser when an evaluation ends.
    pub open_when_done: bool,
    pub task: Option<Task<Evaluation>>,
    pub result: Option<Result<Evaluation, String>>,
}

impl Default for EvalPanel {
    fn default() -> Self {
        EvalPanel {
            split: Split::Val,
            calibrate: false,
            target_sensitivity: 0.95,
            limit: 0,
            open_when_done: true,
            task: None,
            result: None,
        }
    }
}

impl EvalPanel {
    /// Starts the evaluation with the Batch tab's model settings.
    pub fn start(&mut self, ctx: Option<egui::Context>, project: &Path, model: &ModelChoice) {
        let req = EvalRequest {
            project: project.to_path_buf(),
            model: model.folder.clone(),
            adapter: model.checkpoint.clone(),
            split: self.split,
            out: None,
            calibrate: self.calibrate.then_some(self.target_sensitivity),
            threshold: None,
            max_new_tokens: model.max_new_tokens,
            limit: self.limit,
            weights: model.weights,
        };
        self.result = None;
        self.task = Some(Task::spawn("eval", ctx, move |progress| {
            evaluate(
                &req,
                &Device::Cpu,
                |done, total| progress.set(done, total),
                &progress.cancel,
            )
        }));
    }

    /// Takes a finished evaluation; returns the report to open, when one was written.
    pub fn poll(&mut self) -> Option<PathBuf> {
        let result = self.task.as_ref()?.poll()?;
        self.task = None;
        let report = result.as_ref().ok().map(|e| e.html_path.clone());
        self.result = Some(result);
        report.filter(|_| self.open_when_done)
    }

    pub fn ui(&mut self, ui: &mut Ui, why_not: Option<&str>, commands: &mut Vec<Command>) {
        ui.heading("Evaluation");
        ui.horizontal(|ui| {
            let label = ui.label("Split");
            egui::ComboBox::from_id_salt("eval-split")
                .selected_text(self.split.as_str())
                .show_ui(ui, |ui| {
                    for s in Split::ALL {
                        ui.selectable_value(&mut self.split, s, s.as_str());
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text("The split to evaluate (calibrate on val, report on test)");
            ui.checkbox(&mut self.calibrate, "calibrate the threshold")
                .on_hover_text(
                    "Pick the verify threshold that releases this share of true pairs and store \
                     it in the run (roiscope eval --calibrate)",
                );
            ui.add_enabled(
                self.calibrate,
                egui::DragValue::new(&mut self.target_sensitivity)
                    .range(0.01..=1.0)
                    .speed(0.01),
            )
            .on_hover_text("Target sensitivity");
            let label = ui.label("Limit");
            ui.add(egui::DragValue::new(&mut self.limit).range(0..=1_000_000))
                .labelled_by(label.id)
                .on_hover_text("At most this many records of the split (0: all)");
        });
        ui.checkbox(&mut self.open_when_done, "open report.html when done")
            .on_hover_text("Open the report in the web browser when the evaluation ends");
        let why_not = why_not.or(self.task.is_some().then_some("an evaluation is running"));
        ui.horizontal(|ui| {
            if ui
                .add_enabled(why_not.is_none(), egui::Button::new("Evaluate"))
                .on_hover_text("Run roiscope eval's engine with this checkpoint on the split")
                .clicked()
            {
                commands.push(Command::Evaluate);
            }
            if let Some(task) = &self.task {
                if ui
                    .add_enabled(!task.cancelling(), egui::Button::new("Cancel evaluation"))
                    .on_hover_text("Stop; no report is written")
                    .clicked()
                {
                    task.cancel();
                }
                let (done, total) = task.counts();
                ui.add(
                    egui::ProgressBar::new(task.fraction())
                        .desired_width(260.0)
                        .text(format!("{done} of {total} records")),
                );
            }
        });
        if let (Some(why), None) = (why_not, &self.task) {
            ui.label(RichText::new(format!("Evaluate is off: {why}")).small());
        }
        match &self.result {
            Some(Ok(e)) => {
                if let Some(line) = e.calibration_line() {
                    ui.label(line);
                }
                for w in &e.warnings {
                    ui.label(RichText::new(format!("warning: {w}")).color(WARNING));
                }
                for line in e.lines() {
                    ui.label(line);
                }
                ui.horizontal(|ui| {
                    ui.label(RichText::new(e.html_path.display().to_string()).small());
                    if ui
                        .button("Open report")
                        .on_hover_text("Open report.html in the web browser")
                        .clicked()
                    {
                        commands.push(Command::OpenFile(e.html_path.clone()));
                    }
                });
            }
            Some(Err(e)) => {
                ui.label(RichText::new(format!("evaluation failed: {e}")).color(WARNING));
            }
            None => {}
        }
    }
}

pub const WARNING: egui::Color32 = egui::Color32::from_rgb(255, 120, 120);
