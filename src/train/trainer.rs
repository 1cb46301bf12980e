//! The training loop as a library type: it sends typed [`Event`]s over a channel (the command
//! line and the workbench draw them) and obeys [`Control`] messages (pause, resume, stop and
//! save within one step).
//!
//! One step: draw the batch in a seeded order, turn some samples into negatives, run the model
//! (differentiable path, LoRA dropout on), the heads and the three losses, combine them with the
//! learned task weights, backpropagate, and after `grad_accum` batches take one AdamW step on the
//! LoRA adapters, heads and task weights (the base model stays frozen).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::data::{self, Example, NegativeConfig};
use super::heads::{HeadsConfig, MatchHead, RoiHead, TaskWeights};
use super::lora::{self, LoraConfig, LoraSet};
use super::losses::{self, FocalConfig};
use super::optim::{cosine_with_warmup, Accumulated, AdamW, Group};
use crate::model::folder::ModelFolder;
use crate::model::ops::Exec;
use crate::model::random::SplitMix;

/// Everything a run is configured by (`train.toml`); every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many optimiser steps (0: run all epochs).
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr_lora: f64,
    pub lr_heads: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    pub negative_ratio: f64,
    pub hard_negatives: bool,
    pub focal_alpha: f64,
    pub focal_gamma: f64,
    pub missed_diagnosis_weight: f64,
    pub roi_smooth_l1_beta: f64,
    /// Rows of vocabulary-wide logits made at once for the LM loss.
    pub lm_chunk: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        let lora = LoraConfig::default();
        let focal = FocalConfig::default();
        TrainConfig {
            epochs: 3,
            max_steps: 0,
            batch_size: 2,
            grad_accum: 4,
            lr_lora: 1e-4,
            lr_heads: 1e-3,
            weight_decay: 0.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            seed: 0,
            lora_r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            lora_targets: lora.targets,
            negative_ratio: NegativeConfig::default().ratio,
            hard_negatives: false,
            focal_alpha: focal.alpha,
            focal_gamma: focal.gamma,
            missed_diagnosis_weight: focal.missed_weight,
            roi_smooth_l1_beta: 0.1,
            lm_chunk: 256,
            checkpoint_every: 0,
        }
    }
}

impl TrainConfig {
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: TrainConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid training config", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.batch_size > 0, "batch_size must be at least 1");
        ensure!(self.grad_accum > 0, "grad_accum must be at least 1");
        ensure!(
            self.epochs > 0 || self.max_steps > 0,
            "epochs or max_steps must be set"
        );
        ensure!(
            (0.0..=1.0).contains(&self.negative_ratio),
            "negative_ratio must be in [0, 1]"
        );
        ensure!(
            self.lr_lora >= 0.0 && self.lr_heads >= 0.0,
            "learning rates cannot be negative"
        );
        Ok(())
    }

    fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        }
    }

    fn focal(&self) -> FocalConfig {
        FocalConfig {
            alpha: self.focal_alpha,
            gamma: self.focal_gamma,
            missed_weight: self.missed_diagnosis_weight,
        }
    }
}

/// Task order in every per-task array.
pub const TASKS: [&str; 3] = ["roi", "match", "lm"];

/// What the loop reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        examples: usize,
        total_steps: usize,
        trainable_parameters: usize,
    },
    Step {
        step: usize,
        total_steps: usize,
        epoch: usize,
        /// Raw loss per task (roi, match, lm), averaged over the step's batches.
        loss: [f64; 3],
        /// `0.5 exp(-s_i) L_i + 0.5 s_i` per task.
        weighted: [f64; 3],
        /// `exp(-s_i)` per task.
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

/// Where the run is in the data: the epoch, its shuffled order, and the next batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    epoch: usize,
    order: Vec<usize>,
    next_batch: usize,
}

pub struct Trainer {
    config: TrainConfig,
    folder: ModelFolder,
    examples: Vec<Example>,
    lora: LoraSet,
    heads_vars: VarMap,
    roi: RoiHead,
    matcher: MatchHead,
    task: TaskWeights,
    opt: AdamW,
    rng: SplitMix,
    dropout_rng: Arc<Mutex<SplitMix>>,
    position: Position,
    out: PathBuf,
    device: Device,
}

/// Overwrites every variable with seeded uniform values within `1 / sqrt(fan_in)` (zero for the
/// task weights), in name order, so a seed fixes the heads' start.
fn seed_heads(vars: &VarMap, rng: &mut SplitMix) -> anyhow::Result<()> {
    let data = vars.data().lock().expect("heads varmap");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        if name.starts_with("task.") {
            var.set(&var.zeros_like()?)?;
            continue;
        }
        let fan_in = if dims.len() == 2 { dims[1] } else { dims[0] };
        let bound = 1.0 / (fan_in as f64).sqrt();
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        var.set(&Tensor::from_vec(v, dims, var.device())?)?;
    }
    Ok(())
}

impl Trainer {
    /// Sets a run up: the model with fresh adapters and heads, the train split's examples.
    pub fn new(
        config: TrainConfig,
        mut folder: ModelFolder,
        examples: Vec<Example>,
        out: &Path,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        ensure!(
            !examples.is_empty(),
            "no training examples (is the train split empty?)"
        );
        let device = folder.model.device().clone();
        let mut rng = SplitMix::new(config.seed);
        let lora = lora::attach(&mut folder.model, &config.lora(), rng.next_u64(), &device)?;
        let dropout_rng = Arc::new(Mutex::new(SplitMix::new(rng.next_u64())));
        lora::set_dropout_rng(&mut folder.model, Some(dropout_rng.clone()));
        let heads_vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&heads_vars, DType::F32, &device);
        let hidden = folder.config.text.hidden_size;
        let heads_config = HeadsConfig::default();
        let roi = RoiHead::load(vb.pp("roi"), hidden, &heads_config)?;
        let matcher = MatchHead::load(vb.pp("match"), hidden, &heads_config)?;
        let task = TaskWeights::load(vb.pp("task"))?;
        seed_heads(&heads_vars, &mut rng)?;
        let sorted = |vm: &VarMap| -> Vec<(String, Var)> {
            let mut v: Vec<(String, Var)> = vm
                .data()
                .lock()
                .expect("varmap")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let opt = AdamW::new(vec![
            Group {
                name: "lora".into(),
                vars: sorted(&lora.varmap),
                lr: config.lr_lora,
                weight_decay: config.weight_decay,
            },
            Group {
                name: "heads".into(),
                vars: sorted(&heads_vars),
                lr: config.lr_heads,
                weight_decay: 0.0,
            },
        ]);
        Ok(Trainer {
            config,
            folder,
            examples,
            lora,
            heads_vars,
            roi,
            matcher,
            task,
            opt,
            rng,
            dropout_rng,
            position: Position::default(),
            out: out.to_path_buf(),
            device,
        })
    }

    /// Continues the run in `run` from its latest checkpoint: adapters, heads, task weights,
    /// optimiser moments, random generators and the place in the data are restored, so the
    /// steps that follow are those the run would have taken. The settings are the run's own.
    pub fn resume(folder: ModelFolder, examples: Vec<Example>, run: &Path) -> anyhow::Result<Self> {
        let ckpt = latest_checkpoint(run)?;
        let state = crate::data::files::read_json(&ckpt.join("trainer_state.json"))?;
        let what = ckpt.display();
        let config: TrainConfig = serde_json::from_value(state["config"].clone())
            .with_context(|| format!("{what}: unreadable config"))?;
        let position: Position = serde_json::from_value(state["position"].clone())
            .with_context(|| format!("{what}: unreadable position"))?;
        let number = |key: &str| -> anyhow::Result<u64> {
            state[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{what}: no {key}"))
        };
        let (rng, dropout) = (number("rng")?, number("dropout_rng")?);
        let step = state["step"]
            .as_u64()
            .with_context(|| format!("{what}: no step"))? as usize;
        ensure!(
            position.order.is_empty() || position.order.len() == examples.len(),
            "the project's train split has {} records, the run was trained on {}; resuming would \
             not continue the same run",
            examples.len(),
            position.order.len()
        );
        let mut t = Trainer::new(config, folder, examples, run)?;
        restore(
            &t.lora.varmap,
            &ckpt.join("adapter/adapter_model.safetensors"),
        )?;
        restore(&t.heads_vars, &ckpt.join("heads.safetensors"))?;
        let moments = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &t.device)
            .with_context(|| format!("{what}: cannot read optimizer.safetensors"))?;
        for group in &t.opt.groups {
            for (name, _) in &group.vars {
                if let (Some(m), Some(v)) = (
                    moments.get(&format!("m.{name}")),
                    moments.get(&format!("v.{name}")),
                ) {
                    t.opt.moments.insert(name.clone(), (m.clone(), v.clone()));
                }
            }
        }
        ensure!(
            step == 0 || !t.opt.moments.is_empty(),
            "{what}: optimizer.safetensors has no moments for this run's parameters"
        );
        t.opt.step = step;
        t.rng = SplitMix::new(rng);
        *t.dropout_rng.lock().unwrap_or_else(|e| e.into_inner()) = SplitMix::new(dropout);
        t.position = position;
        Ok(t)
    }

    pub fn total_steps(&self) -> usize {
        let per_epoch = self
            .examples
            .len()
            .div_ceil(self.config.batch_size * self.config.grad_accum);
        if self.config.max_steps > 0 {
            self.config.max_steps
        } else {
            per_epoch * self.config.epochs
        }
    }

    fn trainable_parameters(&self) -> usize {
        self.opt
            .groups
            .iter()
            .flat_map(|g| &g.vars)
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Runs to the end (or until told to stop), reporting on `events`. A failure is also sent
    /// as an [`Event::Error`] before it is returned.
    pub fn run(
        &mut self,
        events: &Sender<Event>,
        control: &Receiver<Control>,
    ) -> anyhow::Result<()> {
        let result = self.run_inner(events, control);
        if let Err(e) = &result {
            let _ = events.send(Event::Error {
                message: format!("{e:#}"),
            });
        }
        result
    }

    fn run_inner(
        &mut self,
        events: &Sender<Event>,
        control: &Receiver<Control>,
    ) -> anyhow::Result<()> {
        let total_steps = self.total_steps();
        let _ = events.send(Event::Started {
            examples: self.examples.len(),
            total_steps,
            trainable_parameters: self.trainable_parameters(),
        });
        let started = Instant::now();
        let first_step = self.opt.step;
        let mut samples_seen = 0usize;
        let mut tokens_seen = 0usize;
        let mut acc = Accumulated::default();
        let mut sums = [0f64; 3];
        let mut negatives = 0usize;
        let mut stop_requested = false;
        'epochs: while self.opt.step < total_steps {
            if self.position.order.is_empty() {
                // A seeded shuffle per epoch (Fisher-Yates).
                let mut order: Vec<usize> = (0..self.examples.len()).collect();
                for i in (1..order.len()).rev() {
                    let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                self.position.order = order;
                self.position.next_batch = 0;
            }
            let chunks: Vec<Vec<usize>> = self
                .position
                .order
                .chunks(self.config.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
            while self.position.next_batch < chunks.len() {
                if self.poll_control(events, control)? == Some(Control::Stop) {
                    stop_requested = true;
                }
                // A stop is honoured at a step boundary, so a checkpoint never holds half an
                // accumulated step and resuming repeats the run exactly.
                if stop_requested && acc.batches == 0 {
                    self.checkpoint(events)?;
                    let _ = events.send(Event::Stopped {
                        step: self.opt.step,
                    });
                    return Ok(());
                }
                let chunk = &chunks[self.position.next_batch];
                self.position.next_batch += 1;
                let (losses, batch_tokens, batch_negatives) = self.batch(chunk, &mut acc)?;
                for (s, l) in sums.iter_mut().zip(losses) {
                    *s += l;
                }
                negatives += batch_negatives;
                samples_seen += chunk.len();
                tokens_seen += batch_tokens;
                let epoch_done = self.position.next_batch == chunks.len();
                if epoch_done {
                    self.position.order.clear();
                    self.position.epoch += 1;
                }
                if acc.batches < self.config.grad_accum {
                    if epoch_done {
                        continue 'epochs;
                    }
                    continue;
                }
                let factor =
                    cosine_with_warmup(self.opt.step, self.config.warmup_steps, total_steps);
                let grad_norm = self
                    .opt
                    .update(&acc, factor, Some(self.config.max_grad_norm))?;
                let n = acc.batches as f64;
                acc = Accumulated::default();
                let loss = sums.map(|s| s / n);
                sums = [0.0; 3];
                let s: Vec<f32> = self.task.s.to_vec1()?;
                let precision = [0, 1, 2].map(|i| f64::from((-s[i]).exp()));
                let weighted =
                    [0, 1, 2].map(|i| 0.5 * precision[i] * loss[i] + 0.5 * f64::from(s[i]));
                let elapsed = started.elapsed().as_secs_f64();
                let step = self.opt.step;
                let done_here = (step - first_step).max(1);
                let _ = events.send(Event::Step {
                    step,
                    total_steps,
                    epoch: self.position.epoch - usize::from(epoch_done),
                    loss,
                    weighted,
                    precision,
                    total: weighted.iter().sum(),
                    lr_lora: self.config.lr_lora * factor,
                    lr_heads: self.config.lr_heads * factor,
                    grad_norm,
                    negatives,
                    samples_per_second: samples_seen as f64 / elapsed,
                    tokens_per_second: tokens_seen as f64 / elapsed,
                    eta_seconds: elapsed / done_here as f64 * (total_steps - step) as f64,
                });
                negatives = 0;
                if step >= total_steps {
                    break 'epochs;
                }
                if self.config.checkpoint_every > 0
                    && step.is_multiple_of(self.config.checkpoint_every)
                {
                    self.checkpoint(events)?;
                }
                if epoch_done {
                    continue 'epochs;
                }
            }
        }
        self.checkpoint(events)?;
        let _ = events.send(Event::Finished {
            step: self.opt.step,
        });
        Ok(())
    }

    /// Handles every pending message: a pause blocks until resume or stop. Returns a stop.
    fn poll_control(
        &self,
        events: &Sender<Event>,
        control: &Receiver<Control>,
    ) -> anyhow::Result<Option<Control>> {
        loop {
            match control.try_recv() {
                Ok(Control::Stop) => return Ok(Some(Control::Stop)),
                Ok(Control::Resume) => {}
                Ok(Control::Pause) => {
                    let _ = events.send(Event::Paused {
                        step: self.opt.step,
                    });
                    loop {
                        match control.recv() {
                            Ok(Control::Resume) => {
                                let _ = events.send(Event::Resumed {
                                    step: self.opt.step,
                                });
                                break;
                            }
                            Ok(Control::Stop) | Err(_) => return Ok(Some(Control::Stop)),
                            Ok(Control::Pause) => {}
                        }
                    }
                }
                Err(TryRecvError::Empty) => return Ok(None),
                // Nobody can control the run any more: it goes on to the end.
                Err(TryRecvError::Disconnected) => return Ok(None),
            }
        }
    }

    /// Forward and backward over one batch; the raw losses, real tokens and negatives.
    fn batch(
        &mut self,
        chunk: &[usize],
        acc: &mut Accumulated,
    ) -> anyhow::Result<([f64; 3], usize, usize)> {
        let negatives_config = NegativeConfig {
            ratio: self.config.negative_ratio,
            hard: self.config.hard_negatives,
        };
        let partners = data::draw_partners(chunk, &self.examples, negatives_config, &mut self.rng);
        let mut samples = Vec::with_capacity(chunk.len());
        for (&i, partner) in chunk.iter().zip(&partners) {
            let image_of = &self.examples[partner.unwrap_or(i)];
            samples.push(data::build_sample(
                &self.examples[i],
                image_of,
                &self.folder.tokenizer,
                &self.folder.processor,
            )?);
        }
        let special = self.folder.tokenizer.special();
        let batch = data::collate(&samples, special.endoftext, special.image_pad, &self.device)?;
        let out = self
            .folder
            .model
            .forward(&batch.input, Exec::Differentiable)?;
        let hidden = out.hidden.to_dtype(DType::F32)?;
        let mut heads_rng = SplitMix::new(self.rng.next_u64());
        let boxes = self
            .roi
            .forward(&hidden, &batch.image_mask, Some(&mut heads_rng))?;
        let logits = self.matcher.forward(&hidden, &batch.valid)?;
        let l_roi = losses::roi_loss(
            &boxes,
            &batch.roi_target,
            &batch.roi_weight,
            self.config.roi_smooth_l1_beta,
        )?;
        let l_match = losses::focal_loss(&logits, &batch.labels, self.config.focal())?;
        let l_lm = losses::lm_loss(
            &hidden,
            &self.folder.model.lm_head().to_dtype(DType::F32)?,
            &batch.lm_targets,
            self.config.lm_chunk,
        )?;
        let stacked = Tensor::stack(&[&l_roi, &l_match, &l_lm], 0)?;
        let (total, _) = self.task.combine(&stacked)?;
        let values: Vec<f32> = stacked.to_vec1()?;
        let total_value = total.to_scalar::<f32>()?;
        if !total_value.is_finite() || values.iter().any(|v| !v.is_finite()) {
            bail!(
                "the loss is not finite at step {} (roi {}, match {}, lm {}); the run stops, the last \
                 checkpoint is kept",
                self.opt.step + 1,
                values[0],
                values[1],
                values[2]
            );
        }
        let grads = total.backward()?;
        acc.add(&self.opt, &grads)?;
        let negatives = samples.iter().filter(|s| s.negative).count();
        let raw = [values[0], values[1], values[2]].map(f64::from);
        Ok((raw, batch.tokens, negatives))
    }

    /// Writes `checkpoint-<step>/` atomically: the adapter in peft's layout, the heads and task
    /// weights, and the run's state.
    fn checkpoint(&self, events: &Sender<Event>) -> anyhow::Result<PathBuf> {
        let step = self.opt.step;
        let final_dir = self.out.join(format!("checkpoint-{step}"));
        let staging = self.out.join(format!(".checkpoint-{step}.partial"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        self.lora.save_peft(
            &staging.join("adapter"),
            &self.folder.dir.display().to_string(),
        )?;
        let heads: std::collections::HashMap<String, Tensor> = self
            .heads_vars
            .data()
            .lock()
            .expect("heads varmap")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&heads, staging.join("heads.safetensors"))?;
        let mut moments = std::collections::HashMap::new();
        for (name, (m, v)) in &self.opt.moments {
            moments.insert(format!("m.{name}"), m.clone());
            moments.insert(format!("v.{name}"), v.clone());
        }
        candle_core::safetensors::save(&moments, staging.join("optimizer.safetensors"))?;
        let dropout_state = self
            .dropout_rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state();
        let state = serde_json::json!({
            "step": step,
            "config": self.config,
            "tasks": TASKS,
            "model": self.folder.dir,
            "position": self.position,
            // Decimal strings: JSON numbers would lose bits of a u64 in many readers.
            "rng": self.rng.state().to_string(),
            "dropout_rng": dropout_state.to_string(),
        });
        std::fs::write(
            staging.join("trainer_state.json"),
            serde_json::to_string_pretty(&state)? + "\n",
        )?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&staging, &final_dir)
            .with_context(|| format!("cannot write {}", final_dir.display()))?;
        let _ = events.send(Event::Checkpoint {
            step,
            dir: final_dir.clone(),
        });
        Ok(final_dir)
    }
}

/// The highest-numbered `checkpoint-<step>` folder of a run.
pub fn latest_checkpoint(run: &Path) -> anyhow::Result<PathBuf> {
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(run).with_context(|| format!("cannot read {}", run.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if best.as_ref().is_none_or(|(s, _)| step > *s) {
                best = Some((step, entry.path()));
            }
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("{} has no checkpoint to resume from", run.display()))
}

/// Sets every variable from a safetensors file that must hold exactly these names and shapes.
fn restore(vars: &VarMap, file: &Path) -> anyhow::Result<()> {
    let saved = candle_core::safetensors::load(file, &Device::Cpu)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let data = vars.data().lock().expect("varmap");
    let mut problems = Vec::new();
    for (name, var) in data.iter() {
        match saved.get(name) {
            Some(t) if t.dims() == var.dims() => var.set(&t.to_device(var.device())?)?,
            Some(t) => problems.push(format!(
                "{name} is {:?}, expected {:?}",
                t.dims(),
                var.dims()
            )),
            None => problems.push(format!("{name} is missing")),
        }
    }
    for name in saved.keys() {
        if !data.contains_key(name) {
            problems.push(format!("{name} is unexpected"));
        }
    }
    if !problems.is_empty() {
        bail!("{}: {}", file.display(), problems.join("; "));
    }
    Ok(())
}
