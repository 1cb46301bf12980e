//! What a run reports ([`Event`], one per line of `metrics.jsonl`) and what it obeys
//! ([`Control`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Task order in every per-task array.
pub const TASKS: [&str; 3] = ["roi", "match", "lm"];

/// Per-task values in `metrics.jsonl`: an object keyed by task name (`{"roi": .., "match": ..,
/// "lm": ..}`). Reading also takes the positional arrays of schema 1; a missing or null value
/// (JSON has no NaN) reads as NaN.
mod per_task {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::TASKS;

    pub fn serialize<S: Serializer>(v: &[f64; 3], s: S) -> Result<S::Ok, S::Error> {
        let map: serde_json::Map<String, serde_json::Value> = TASKS
            .iter()
            .zip(v)
            .map(|(k, x)| (k.to_string(), serde_json::json!(x)))
            .collect();
        map.serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Named(std::collections::HashMap<String, Option<f64>>),
        Positional([Option<f64>; 3]),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 3], D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Named(map) => TASKS.map(|k| map.get(k).copied().flatten().unwrap_or(f64::NAN)),
            Form::Positional(a) => a.map(|x| x.unwrap_or(f64::NAN)),
        })
    }
}

/// The layout of `metrics.jsonl` lines: 2 keys per-task values by task name (1 had arrays in
/// [`TASKS`] order).
pub const METRICS_SCHEMA: u32 = 2;

/// What the loop reports; written to `metrics.jsonl` one per line (see `train::metrics`) and
/// read back with the same types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        examples: usize,
        total_steps: usize,
        trainable_parameters: usize,
        /// One replica per device, e.g. `["cpu"]` or `["cuda:0", "cuda:1"]`.
        devices: Vec<String>,
    },
    Step {
        step: usize,
        total_steps: usize,
        epoch: usize,
        /// Raw loss per task (roi, match, lm), averaged over the step's batches.
        #[serde(with = "per_task")]
        loss: [f64; 3],
        /// `0.5 exp(-s_i) L_i + 0.5 s_i` per task.
        #[serde(with = "per_task")]
        weighted: [f64; 3],
        /// `exp(-s_i)` per task.
        #[serde(with = "per_task")]
        precision: [f64; 3],
        total: f64,
        lr_lora: f64,
        lr_heads: f64,
        grad_norm: f64,
        negatives: usize,
        samples_per_second: f64,
        tokens_per_second: f64,
        eta_seconds: f64,
    },
    Checkpoint {
        step: usize,
        dir: PathBuf,
    },
    /// A validation on the val split (see `train::validation`).
    Validation {
        step: usize,
        /// Raw loss per task over the validation pairs.
        #[serde(with = "per_task")]
        loss: [f64; 3],
        /// Mean IoU of the ROI head's box on true pairs; none without boxes.
        roi_iou: Option<f64>,
        /// ROC AUC of the match head, true pairs against negatives; none without both.
        match_auc: Option<f64>,
        pairs: usize,
        /// Pairs left out because their record could not be made into a sample (named in a
        /// warning).
        skipped: usize,
        /// The best value of `best_metric` so far: this step's checkpoint is kept as `best`.
        best: bool,
    },
    Warning {
        message: String,
    },
    Paused {
        step: usize,
    },
    Resumed {
        step: usize,
    },
    /// Stopped on request after saving.
    Stopped {
        step: usize,
    },
    Finished {
        step: usize,
    },
    Error {
        message: String,
    },
}

/// What the loop obeys, checked between batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    /// Save a checkpoint and end the run.
    Stop,
}
