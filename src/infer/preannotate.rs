//! Model-assisted pre-annotation: locate -> diagnose -> verify ([`Pipeline`], as `roiscope infer
//! --adapter` runs it) on the records of a pre-annotation run, each result stored with the run
//! as soon as it is known (`crate::data::store::predictions`). The run goes on from the records
//! it has not reached, so cancelling loses only the record in flight; a record the model fails
//! on (an unreadable image) gets a row with the error, never a silent gap.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;

use super::verdict::verdict_with_reason;
use super::{Pipeline, DEFAULT_QUESTION};
use crate::data::image_io::{load_rgb8, LoadOptions};
use crate::data::store::{Prediction, Project, StoredRecord};
use crate::model::quantized::WeightFormat;

/// The run to carry on with and how to load the model.
#[derive(Debug, Clone)]
pub struct PreannotateRequest {
    pub project: PathBuf,
    pub run_id: i64,
    pub model: PathBuf,
    /// A run folder (its latest checkpoint) or a checkpoint folder.
    pub checkpoint: PathBuf,
    pub weights: WeightFormat,
    pub max_new_tokens: usize,
    /// `None`: the run's calibrated threshold (0.5 without one).
    pub threshold: Option<f64>,
}

/// What the pre-annotation reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The model is loaded; `done` of `total` records had a prediction already.
    Started {
        done: usize,
        total: usize,
        threshold: f64,
    },
    /// One more record stored (`error`: what the model failed on).
    Record {
        record_id: i64,
        done: usize,
        total: usize,
        error: Option<String>,
    },
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub done: usize,
    pub total: usize,
    pub cancelled: bool,
}

/// The user question of a record (the prompt the model answers), else the sample data's.
pub fn question_of(record: &StoredRecord) -> String {
    record
        .record
        .get("messages")
        .and_then(|m| m.as_array())
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or(DEFAULT_QUESTION)
        .to_string()
}

/// Runs the pipeline on the run's records that have no prediction yet, in the run's order,
/// storing each; stops before the next record (or within a generation) once `cancel` is set,
/// storing nothing for the record it was on.
pub fn preannotate(
    req: &PreannotateRequest,
    device: &Device,
    cancel: &AtomicBool,
    mut on_step: impl FnMut(Step),
) -> anyhow::Result<Finished> {
    let mut project = Project::open(&req.project)?;
    let total = project.preannotation_run(req.run_id)?.record_ids.len();
    let pending = project.pending_predictions(req.run_id)?;
    let mut done = total - pending.len();
    let mut pipeline = Pipeline::open_in(
        &req.model,
        &req.checkpoint,
        req.threshold,
        req.weights,
        device,
    )?;
    pipeline.max_new_tokens = req.max_new_tokens;
    on_step(Step::Started {
        done,
        total,
        threshold: pipeline.threshold,
    });
    let cancelled = || cancel.load(Ordering::Relaxed);
    for id in pending {
        if cancelled() {
            break;
        }
        let record = project.record(id)?;
        let image_path = project.training_image_path(&record);
        let outcome = load_rgb8(&image_path, LoadOptions::default())
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", image_path.display()))
            .and_then(|image| {
                pipeline.run_streaming(&image, &question_of(&record), |_| {
                    if cancelled() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
            });
        if cancelled() {
            // A generation cut short is not the model's answer: the record stays pending.
            break;
        }
        let prediction = match outcome {
            Ok(o) => Prediction {
                run_id: req.run_id,
                coords: Some(o.roi.map(f64::from)),
                match_score: Some(f64::from(o.match_score)),
                threshold: Some(o.threshold),
                verified: o.verified,
                verdict: verdict_with_reason(&o),
                generated: Some(o.generated),
                error: None,
                at: String::new(),
            },
            Err(e) => {
                let error = format!("{e:#}");
                Prediction {
                    run_id: req.run_id,
                    coords: None,
                    match_score: None,
                    threshold: Some(pipeline.threshold),
                    verified: false,
                    generated: None,
                    verdict: format!("failed: {error}"),
                    error: Some(error),
                    at: String::new(),
                }
            }
        };
        project.store_prediction(id, &prediction)?;
        done += 1;
        on_step(Step::Record {
            record_id: id,
            done,
            total,
            error: prediction.error,
        });
    }
    Ok(Finished {
        done,
        total,
        cancelled: cancelled(),
    })
}
