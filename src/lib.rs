//! roiscope: a workbench for ROI-grounded medical vision-language fine-tuning.
//!
//! One engine, two faces: the `roiscope` command line (see `src/main.rs` and [`cli`]) and the egui
//! workbench ([`app`]). Modules own one concern each:
//! - [`data`]: images and DICOM, green-ROI detection, marker removal, the project store;
//! - [`model`]: Qwen3-VL in candle, its inputs and generation;
//! - [`train`]: the task heads and losses of multi-task fine-tuning;
//! - [`infer`]: locate -> diagnose -> verify with a trained checkpoint, overlays;
//! - [`eval`]: metrics, evaluation reports, calibration of the verify threshold;
//! - [`parallel`]: an order-preserving worker pool for per-file jobs;
//! - [`app`]: the workbench window (egui), over the same engine calls as the command line;
//! - [`cli`]: the commands, rendering progress and results for a terminal;
//! - [`assets`]: where the shipped files (sample project, tokenizer) are.

pub mod app;
pub mod assets;
pub mod cli;
pub mod data;
pub mod eval;
pub mod infer;
pub mod model;
pub mod parallel;
pub mod train;
