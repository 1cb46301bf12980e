//! Multi-task fine-tuning of Qwen3-VL.
//!
//! - [`lora`]: adapters on the linear layers, in peft's layout;
//! - [`heads`]: attention pooling, the ROI and match heads, the learned task weights;
//! - [`losses`]: ROI (SmoothL1 + GIoU), match (focal, missed-diagnosis weight), LM (answer only);
//! - [`data`]: examples from a project, negatives, batches;
//! - [`replica`]: one model replica with its adapters and heads, forward and backward on a part
//!   of a batch;
//! - [`devices`]: `--devices`, and summing the replicas' gradients;
//! - [`optim`]: AdamW with parameter groups, schedule, clipping, accumulation;
//! - [`config`]: a run's settings (`train.toml`) and the ablation presets;
//! - [`events`]: what a run reports and what it obeys;
//! - [`trainer`]: the loop;
//! - [`run`]: one run as the command line and the window start it: its folder, record,
//!   metrics file, thread and controls;
//! - [`memory`]: whether a step fits, known before it runs;
//! - [`checkpoint`]: checkpoint folders written durably, kept, and picked only when complete;
//! - [`metrics`]: `metrics.jsonl`, written and read back as typed events;
//! - [`run_record`]: what a run remembers (project, model folder and its weights, settings);
//! - [`validation`]: losses, ROI IoU and match AUC on the val split during a run;
//! - [`heap`]: the allocator kept from unmapping and remapping a step's large buffers.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod devices;
pub mod events;
pub mod heads;
pub mod heap;
pub mod lora;
pub mod losses;
pub mod meaning;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod replica;
pub mod run;
pub mod run_record;
pub mod trainer;
pub mod validation;
