//! The prediction panel: locate -> diagnose -> verify (`crate::infer::Pipeline`, as
//! `roiscope infer --adapter` runs it) on the current record's marker-free image with a chosen
//! checkpoint. The pipeline is loaded and run on a worker thread that keeps it between requests;
//! the predicted box goes on the canvas, with the match score, the diagnosis (withheld as
//! "unverified" under the threshold), and buttons to copy it or take the box as the correction.
//! The diagnosis shows as its tokens are generated; the weights can be packed (Q8_0, Q4K, bf16;
//! `crate::model::quantized`) for a workstation without a GPU.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};

use candle_core::Device;
use egui::{Color32, RichText, Ui};

use super::Command;
use crate::data::image_io::{load_rgb8, LoadOptions};
use crate::data::store::{BoxSource, StoredRecord};
pub use crate::infer::verdict::verdict_with_reason;
use crate::infer::{preannotate::question_of, Outcome, Pipeline};
use crate::model::quantized::WeightFormat;

struct Job {
    record: i64,
    model: PathBuf,
    checkpoint: PathBuf,
    image: PathBuf,
    question: String,
    /// `None`: the run's calibrated threshold (0.5 without one).
    threshold: Option<f64>,
    weights: WeightFormat,
    ctx: egui::Context,
}

enum Reply {
    /// The diagnosis generated so far for a record.
    Partial(i64, String),
    Done(i64, Result<Outcome, String>),
}

#[derive(Default)]
pub struct PredictPanel {
    /// A checkpoint folder, or a run folder meaning its latest checkpoint.
    pub checkpoint: String,
    pub override_threshold: bool,
    /// How the model's weights are stored (read at the next load).
    pub weights: WeightFormat,
    jobs: Option<Sender<Job>>,
    replies: Option<Receiver<Reply>>,
    pub running: Option<i64>,
    /// The last outcome, for the record it was made on.
    pub outcome: Option<(i64, Result<Outcome, String>)>,
    /// The diagnosis so far while a run generates it (after the run: the last text streamed).
    pub partial: Option<(i64, String)>,
}

/// The worker: keeps the last pipeline while the model, checkpoint and weight format stay the
/// same.
fn worker(jobs: Receiver<Job>, replies: Sender<Reply>) {
    let mut loaded: Option<((PathBuf, PathBuf, WeightFormat), Pipeline)> = None;
    let mut calibrated = 0.5;
    for job in jobs {
        let key = (job.model.clone(), job.checkpoint.clone(), job.weights);
        let result = (|| -> anyhow::Result<Outcome> {
            if loaded.as_ref().is_none_or(|(k, _)| *k != key) {
                loaded = None;
                let p = Pipeline::open_in(
                    &job.model,
                    &job.checkpoint,
                    None,
                    job.weights,
                    &Device::Cpu,
                )?;
                calibrated = p.threshold;
                loaded = Some((key.clone(), p));
            }
            let Some((_, pipeline)) = loaded.as_mut() else {
                anyhow::bail!("no pipeline")
            };
            pipeline.threshold = job.threshold.unwrap_or(calibrated);
            let image = load_rgb8(&job.image, LoadOptions::default())
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", job.image.display()))?;
            pipeline.run_streaming(&image, &job.question, |text| {
                // The panel may be gone; the run still finishes.
                let _ = replies.send(Reply::Partial(job.record, text.to_string()));
                job.ctx.request_repaint();
                std::ops::ControlFlow::Continue(())
            })
        })();
        if replies
            .send(Reply::Done(
                job.record,
                result.map_err(|e| format!("{e:#}")),
            ))
            .is_err()
        {
            return;
        }
        job.ctx.request_repaint();
    }
}

/// The "Weights" choice: how the model's weights are stored when it is loaded.
pub fn weights_ui(ui: &mut Ui, id: &str, weights: &mut WeightFormat) {
    let label = ui.label("Weights");
    egui::ComboBox::from_id_salt(id)
        .selected_text(weights.name())
        .show_ui(ui, |ui| {
            for format in WeightFormat::ALL {
                ui.selectable_value(weights, format, format.name());
            }
        })
        .response
        .labelled_by(label.id)
        .on_hover_text(
            "How the model's weights are stored: f32 (exact, most memory), bf16, or quantised \
             q8_0 / q4k (less memory, faster on a CPU; the adapter is merged in). Taken at the \
             next load",
        );
}

impl PredictPanel {
    /// The predicted box to draw for `record`: this session's outcome, else the stored one.
    pub fn predicted(&self, record: &StoredRecord) -> Option<([f64; 4], Option<f64>)> {
        match &self.outcome {
            Some((id, Ok(o))) if *id == record.id => {
                Some((o.roi.map(f64::from), Some(o.match_score as f64)))
            }
            _ => record
                .get_box(BoxSource::Predicted)
                .map(|b| (b.coords, b.confidence)),
        }
    }

    pub fn poll(&mut self) {
        let Some(rx) = &self.replies else { return };
        loop {
            match rx.try_recv() {
                Ok(Reply::Partial(id, text)) => self.partial = Some((id, text)),
                Ok(Reply::Done(id, result)) => {
                    self.running = None;
                    self.outcome = Some((id, result));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    // The worker died (a panic in the model code): say so, and start a new
                    // worker on the next request.
                    if let Some(id) = self.running.take() {
                        self.outcome =
                            Some((id, Err("the prediction worker stopped unexpectedly".into())));
                    }
                    self.jobs = None;
                    self.replies = None;
                    break;
                }
            }
        }
    }

    fn request(
        &mut self,
        ctx: &egui::Context,
        record: &StoredRecord,
        image: PathBuf,
        model: &str,
        threshold: Option<f64>,
    ) {
        if self.jobs.is_none() {
            let (jtx, jrx) = channel();
            let (rtx, rrx) = channel();
            std::thread::spawn(move || worker(jrx, rtx));
            self.jobs = Some(jtx);
            self.replies = Some(rrx);
        }
        let question = question_of(record);
        let job = Job {
            record: record.id,
            model: PathBuf::from(model.trim()),
            checkpoint: PathBuf::from(self.checkpoint.trim()),
            image,
            question,
            threshold,
            weights: self.weights,
            ctx: ctx.clone(),
        };
        if self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok()) {
            self.running = Some(record.id);
            self.partial = None;
        } else {
            self.jobs = None;
            self.outcome = Some((
                record.id,
                Err("the prediction worker stopped; try again".into()),
            ));
        }
    }

    /// `image`: the marker-free image the model should see; `model`: the model folder.
    #[allow(clippy::too_many_arguments)]
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        record: &StoredRecord,
        image: PathBuf,
        model: &str,
        latest_run: Option<&std::path::Path>,
        threshold: &mut f64,
        commands: &mut Vec<Command>,
    ) {
        self.poll();
        ui.label(RichText::new("Prediction: locate -> diagnose -> verify").strong());
        if self.checkpoint.trim().is_empty() {
            if let Some(run) = latest_run {
                self.checkpoint = run.display().to_string();
            }
        }
        ui.horizontal(|ui| {
            let label = ui.label("Checkpoint");
            ui.add(egui::TextEdit::singleline(&mut self.checkpoint).desired_width(f32::INFINITY).hint_text("RUN_DIR or checkpoint folder"))
                .labelled_by(label.id)
                .on_hover_text("A training run folder (its latest checkpoint) or a checkpoint-<step> folder; the model folder is the Training tab's");
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.override_threshold, "threshold")
                .on_hover_text("Off: the run's calibrated verify threshold (0.5 without calibration). On: the value here");
            ui.add_enabled(self.override_threshold, egui::Slider::new(threshold, 0.0..=1.0))
                .on_hover_text("A diagnosis whose match score is under this is withheld as unverified");
        });
        ui.horizontal(|ui| weights_ui(ui, "predict-weights", &mut self.weights));
        let ready = !model.trim().is_empty() && !self.checkpoint.trim().is_empty();
        let busy = self.running.is_some();
        if ui
            .add_enabled(
                ready && !busy,
                egui::Button::new(if busy {
                    "Running..."
                } else {
                    "Run on this image"
                }),
            )
            .on_hover_text("Run the model with this checkpoint on the record's marker-free image")
            .on_disabled_hover_text(
                "Give a model folder (Training tab) and a checkpoint; one run at a time",
            )
            .clicked()
        {
            let t = self.override_threshold.then_some(*threshold);
            self.request(ui.ctx(), record, image, model, t);
        }
        if let (Some(running), Some((id, text))) = (self.running, &self.partial) {
            if running == record.id && *id == record.id {
                ui.label(RichText::new(format!("generating: {text}")).italics());
            }
        }
        match &self.outcome {
            Some((id, Ok(o))) if *id == record.id => {
                let colour = if o.verified {
                    Color32::LIGHT_GREEN
                } else {
                    Color32::from_rgb(240, 170, 60)
                };
                ui.label(RichText::new(verdict_with_reason(o)).color(colour));
                ui.label(format!(
                    "box [{:.3}, {:.3}, {:.3}, {:.3}]",
                    o.roi[0], o.roi[1], o.roi[2], o.roi[3]
                ));
                let shown = if o.generated.trim().is_empty() {
                    "(empty)"
                } else {
                    o.generated.as_str()
                };
                match o.released() {
                    Some(_) => ui.label(format!("diagnosis: {shown}")),
                    None => ui.label(
                        RichText::new(format!("withheld (unverified): {shown}"))
                            .italics()
                            .weak(),
                    ),
                };
                ui.horizontal(|ui| {
                    if ui
                        .button("Use box as correction")
                        .on_hover_text(
                            "Set the corrected box to the predicted one (one undoable edit)",
                        )
                        .clicked()
                    {
                        commands.push(Command::SetBox(Some(o.roi.map(f64::from))));
                    }
                    if ui
                        .button("Copy")
                        .on_hover_text("Copy the box, score, verdict and diagnosis")
                        .clicked()
                    {
                        ui.ctx()
                            .copy_text(serde_json::to_string_pretty(o).unwrap_or_default());
                    }
                });
            }
            Some((id, Err(e))) if *id == record.id => {
                ui.label(RichText::new(e).color(Color32::from_rgb(255, 120, 120)));
            }
            _ => match record.get_box(BoxSource::Predicted) {
                Some(b) => {
                    // A pre-annotation's verdict, with its reason and what was generated.
                    if let Some(p) = &record.prediction {
                        ui.label(format!("pre-annotation run {}: {}", p.run_id, p.verdict));
                        if let Some(text) = p.generated.as_deref().filter(|t| !t.is_empty()) {
                            ui.label(RichText::new(format!("generated: {text}")).italics());
                        }
                    }
                    ui.label(format!(
                        "stored predicted box [{:.3}, {:.3}, {:.3}, {:.3}]{}",
                        b.coords[0],
                        b.coords[1],
                        b.coords[2],
                        b.coords[3],
                        b.confidence
                            .map_or(String::new(), |s| format!(", score {s:.3}"))
                    ));
                    if ui
                        .button("Use box as correction")
                        .on_hover_text("Set the corrected box to the stored predicted one")
                        .clicked()
                    {
                        commands.push(Command::SetBox(Some(b.coords)));
                    }
                }
                None => {
                    ui.label(RichText::new("no prediction for this record yet").small());
                }
            },
        }
    }
}
