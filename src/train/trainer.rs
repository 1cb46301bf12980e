//! The training loop as a library type: it sends typed [`Event`]s over a channel (the command
//! line and the workbench draw them) and obeys [`Control`] messages (pause, resume, stop and
//! save within one step).
//!
//! One step: draw the batch in a seeded order, turn some samples into negatives, run the model
//! (differentiable path, LoRA dropout on), the heads and the three losses, combine them with the
//! learned task weights, backpropagate, and after `grad_accum` batches take one AdamW step on the
//! LoRA adapters, heads and task weights (the base model stays frozen).
//!
//! With several devices each [`Replica`] takes a part of every batch; their gradients are summed
//! (`devices::reduce`) and the step is taken once, so the run equals the run on one device.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rayon::iter::{IndexedParallelIterator, IntoParallelRefIterator, ParallelIterator};
use serde::{Deserialize, Serialize};

pub use super::checkpoint::{checkpoint_step, latest_checkpoint};
use super::checkpoint::{ensure_complete, write_checkpoint};
use super::config::RECOMPUTE_FROM_PARAMETERS;
pub use super::config::{BaseDtype, TrainConfig, PRESETS};
use super::data::{self, Counts, Example, NegativeConfig};
use super::devices::{self, DeviceSpec};
pub use super::events::{Control, Event, METRICS_SCHEMA, TASKS};
use super::memory;
use super::optim::{cosine_with_warmup, Accumulated, AdamW, Group};
use super::replica::{Prediction, Replica, Shard, ShardResult};
use super::run_record::RunRecord;
pub use super::validation::BestMetric;
use super::validation::ValidationSet;
use crate::data::record::check_training_text;
use crate::model::folder::ModelFolder;
use crate::model::processor::ImageProcessorConfig;
use crate::model::random::SplitMix;
use crate::model::tokenizer::QwenTokenizer;

/// Where the run is in the data: the epoch, its shuffled order, and the next batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    epoch: usize,
    order: Vec<usize>,
    next_batch: usize,
}

/// A checkpoint's `trainer_state.json`: what, beside the tensors, continues the run exactly.
/// (`checkpoint::write_checkpoint` adds the list of the checkpoint's files.)
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    /// Optimiser steps taken.
    step: usize,
    config: TrainConfig,
    /// The task order of per-task values ([`TASKS`]).
    #[serde(default)]
    tasks: Vec<String>,
    /// The model folder the run was trained on.
    model: PathBuf,
    position: Position,
    /// The data order's random generator, as a decimal string: JSON numbers lose bits of a
    /// u64 in many readers.
    rng: String,
    /// The step and score of the best validation so far.
    #[serde(default)]
    best: Option<(usize, f64)>,
}

impl TrainerState {
    fn read(ckpt: &Path) -> anyhow::Result<Self> {
        let value = crate::data::files::read_json(&ckpt.join(super::checkpoint::STATE_FILE))?;
        serde_json::from_value(value)
            .with_context(|| format!("{}: unreadable trainer_state.json", ckpt.display()))
    }
}

/// What a run is made from: the devices of `devices` (e.g. `cpu`, `cuda:0,1`), the project's
/// train split and the model folder loaded on the first device with its base weights in
/// `base_dtype` (adapters, heads and losses are f32, DESIGN 4). The command line and the
/// workbench both start runs from it.
pub fn load_inputs(
    project: &Path,
    model: &Path,
    devices: &str,
    base_dtype: BaseDtype,
) -> anyhow::Result<(Vec<DeviceSpec>, Vec<Example>, ModelFolder)> {
    let devices = devices::parse(devices)?;
    let first = devices[0].open()?;
    let project = crate::data::store::Project::open(project)?;
    let examples = data::load_examples(&project, crate::data::store::Split::Train)?;
    let dtype = base_dtype.resolve(&first);
    let folder = ModelFolder::open(model, dtype, &first)
        .with_context(|| format!("cannot load the model folder {}", model.display()))?;
    Ok((devices, examples, folder))
}

/// The project's val split, for [`Trainer::set_validation`].
pub fn load_val_examples(project: &Path) -> anyhow::Result<Vec<Example>> {
    let project = crate::data::store::Project::open(project)?;
    data::load_examples(&project, crate::data::store::Split::Val)
}

pub struct Trainer {
    config: TrainConfig,
    model_dir: PathBuf,
    tokenizer: QwenTokenizer,
    processor: ImageProcessorConfig,
    examples: Vec<Example>,
    /// One per device; the first holds the optimiser's parameters.
    replicas: Vec<Replica>,
    devices: Vec<DeviceSpec>,
    opt: AdamW,
    rng: SplitMix,
    position: Position,
    out: PathBuf,
    /// When the last checkpoint was written (or the run began), for `checkpoint_minutes`.
    last_checkpoint: Instant,
    /// The val split's pairs (none: no validation).
    validation: Option<ValidationSet>,
    /// The step and score (higher is better) of the best validation so far.
    best: Option<(usize, f64)>,
    /// Samples left out because their record could not be trained on.
    skipped: usize,
}

impl Trainer {
    /// Sets a run up: a replica of the model with fresh adapters and heads on each of `devices`
    /// (the folder's model is the first, and must be on the first device), and the train
    /// split's examples.
    pub fn new(
        config: TrainConfig,
        folder: ModelFolder,
        examples: Vec<Example>,
        out: &Path,
        devices: &[DeviceSpec],
    ) -> anyhow::Result<Self> {
        config.validate()?;
        super::heap::keep_freed_memory();
        ensure!(
            !examples.is_empty(),
            "no training examples (is the train split empty?)"
        );
        let devices = if devices.is_empty() {
            vec![DeviceSpec::Cpu]
        } else {
            devices.to_vec()
        };
        ensure!(
            config.batch_size >= devices.len(),
            "batch_size {} cannot be shared by {} devices (it is the batch of all devices together)",
            config.batch_size,
            devices.len()
        );
        let ModelFolder {
            dir,
            processor,
            tokenizer,
            model,
            ..
        } = folder;
        // The other replicas' base models: on the CPU the weights are shared, not copied (they
        // are frozen); another device loads its own.
        let mut models = vec![];
        for spec in &devices[1..] {
            let device = spec.open()?;
            models.push(if device.same_device(model.device()) {
                model.clone()
            } else {
                ModelFolder::open(&dir, model.storage_dtype(), &device)
                    .with_context(|| format!("loading the replica on {spec}"))?
                    .model
            });
        }
        models.insert(0, model);
        let processor = with_pixel_budget(processor, config.max_image_pixels);
        let recompute = config
            .recompute
            .unwrap_or_else(|| models[0].parameter_count() >= RECOMPUTE_FROM_PARAMETERS);
        let mut rng = SplitMix::new(config.seed);
        let seeds = (rng.next_u64(), rng.next_u64());
        let special = tokenizer.special();
        let replicas = models
            .into_iter()
            .map(|m| {
                Replica::new(
                    m,
                    &config.lora(),
                    seeds,
                    (special.endoftext, special.image_pad),
                    recompute,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (adapters, heads) = replicas[0].trainable();
        let opt = AdamW::new(vec![
            Group {
                name: "lora".into(),
                vars: adapters,
                lr: config.lr_lora,
                weight_decay: config.weight_decay,
            },
            Group {
                name: "heads".into(),
                vars: heads,
                lr: config.lr_heads,
                weight_decay: 0.0,
            },
        ]);
        Ok(Trainer {
            config,
            model_dir: dir,
            tokenizer,
            processor,
            examples,
            replicas,
            devices,
            opt,
            rng,
            position: Position::default(),
            out: out.to_path_buf(),
            last_checkpoint: Instant::now(),
            validation: None,
            best: None,
            skipped: 0,
        })
    }

    /// Continues the run in `run` from its latest checkpoint: adapters, heads, task weights,
    /// optimiser moments, the random generator and the place in the data are restored, so the
    /// steps that follow are those the run would have taken. The settings are the run's own;
    /// the devices may differ (a batch gives the same step on any number of them).
    pub fn resume(
        folder: ModelFolder,
        examples: Vec<Example>,
        run: &Path,
        devices: &[DeviceSpec],
    ) -> anyhow::Result<Self> {
        Self::resume_with(folder, examples, run, devices, None)
    }

    /// [`Trainer::resume`] with the settings `config` instead of the checkpoint's (a longer
    /// run: see [`super::run_record::extend_config`]). A run that recorded its model folder's
    /// weights (`run.json`) refuses a folder whose weights changed.
    pub fn resume_with(
        folder: ModelFolder,
        examples: Vec<Example>,
        run: &Path,
        devices: &[DeviceSpec],
        config: Option<TrainConfig>,
    ) -> anyhow::Result<Self> {
        if let Some(record) = RunRecord::read(run)? {
            record.check_model(&folder.dir)?;
        }
        let ckpt = latest_checkpoint(run)?;
        ensure_complete(&ckpt)?;
        let state = TrainerState::read(&ckpt)?;
        let what = ckpt.display();
        let config = config.unwrap_or(state.config);
        let position = state.position;
        let rng = state
            .rng
            .parse()
            .with_context(|| format!("{what}: unreadable rng"))?;
        let step = state.step;
        ensure!(
            position.order.is_empty() || position.order.len() == examples.len(),
            "the project's train split has {} records, the run was trained on {}; resuming would \
             not continue the same run",
            examples.len(),
            position.order.len()
        );
        let mut t = Trainer::new(config, folder, examples, run, devices)?;
        let first = &t.replicas[0];
        restore(
            &first.lora.varmap,
            &ckpt.join("adapter/adapter_model.safetensors"),
        )?;
        restore(&first.heads_vars, &ckpt.join("heads.safetensors"))?;
        for other in &t.replicas[1..] {
            other.copy_from(&t.replicas[0])?;
        }
        let device = t.replicas[0].device().clone();
        let moments = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &device)
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
        t.position = position;
        t.best = state.best;
        ensure!(
            t.total_steps() >= step,
            "the run is at step {step} already; its settings end it at step {} (give a larger \
             max_steps or epochs to train on)",
            t.total_steps()
        );
        Ok(t)
    }

    /// The optimiser steps of the whole run: `max_steps`, else every epoch's batches in steps
    /// of `grad_accum` (the last step of an epoch may take fewer).
    pub fn total_steps(&self) -> usize {
        let per_epoch = self
            .examples
            .len()
            .div_ceil(self.config.batch_size)
            .div_ceil(self.config.grad_accum);
        if self.config.max_steps > 0 {
            self.config.max_steps
        } else {
            per_epoch * self.config.epochs
        }
    }

    /// Validates on these records (the project's val split) every `validate_every` steps and
    /// at the end; an empty split means no validation.
    pub fn set_validation(&mut self, val: Vec<Example>) {
        let set = ValidationSet::new(val, self.config.val_examples);
        self.validation = (!set.is_empty() && self.config.validate_every > 0).then_some(set);
    }

    /// Runs a validation and reports it; whether it is the best so far.
    fn validate(&mut self, events: &Sender<Event>) -> anyhow::Result<bool> {
        let Some(set) = &self.validation else {
            return Ok(false);
        };
        let v = set.run(
            &self.replicas[0],
            &self.tokenizer,
            &self.processor,
            self.config.batch_size,
            self.config.losses(),
        )?;
        let step = self.opt.step;
        for (record, reason) in &v.skipped {
            let _ = events.send(Event::Warning {
                message: format!("validation at step {step}: record {record} left out: {reason}"),
            });
        }
        let score = self.config.best_metric.score(&v);
        let best = score.is_finite() && self.best.is_none_or(|(_, b)| score > b);
        if best {
            self.best = Some((step, score));
        }
        let finite = |x: f64| x.is_finite().then_some(x);
        let _ = events.send(Event::Validation {
            step,
            loss: v.loss,
            roi_iou: finite(v.roi_iou),
            match_auc: finite(v.match_auc),
            pairs: v.pairs,
            skipped: v.skipped.len(),
            best,
        });
        Ok(best)
    }

    /// What the model and heads, as trained so far, say about (text of `pairs[i].0`, image of
    /// `pairs[i].1`) pairs: the ROI box and the match probability, laid out as in training
    /// (question, image, answer), without dropout. Runs `batch_size` pairs at a time on the
    /// first device.
    pub fn predict(&self, pairs: &[(&Example, &Example)]) -> anyhow::Result<Vec<Prediction>> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(self.config.batch_size.max(1)) {
            let samples = chunk
                .iter()
                .map(|(text, image)| {
                    data::build_sample(text, image, &self.tokenizer, &self.processor)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.extend(self.replicas[0].predict(&samples)?);
        }
        Ok(out)
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
            devices: self.devices.iter().map(ToString::to_string).collect(),
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
                let (losses, batch_tokens, batch_negatives, skipped) =
                    self.batch(chunk, &mut acc)?;
                for (record, reason) in skipped {
                    self.skipped += 1;
                    let _ = events.send(Event::Warning {
                        message: format!(
                            "record {record} skipped ({} skipped so far in this run): {reason}",
                            self.skipped
                        ),
                    });
                }
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
                // The last step of an epoch takes the batches that are left, fewer than
                // `grad_accum` if need be: a step never spans two epochs, so `epochs` means
                // what it says.
                if acc.batches == 0 || (acc.batches < self.config.grad_accum && !epoch_done) {
                    continue;
                }
                let factor =
                    cosine_with_warmup(self.opt.step, self.config.warmup_steps, total_steps);
                let grad_norm = self
                    .opt
                    .update(&acc, factor, Some(self.config.max_grad_norm))?;
                for other in &self.replicas[1..] {
                    other.copy_from(&self.replicas[0])?;
                }
                let n = acc.batches as f64;
                acc = Accumulated::default();
                let loss = sums.map(|s| s / n);
                sums = [0.0; 3];
                let s: Vec<f32> = self.replicas[0].task.s.to_vec1()?;
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
                let finished = step >= total_steps;
                let by_validation = self.config.validate_every > 0
                    && step.is_multiple_of(self.config.validate_every);
                let best = (finished || by_validation) && self.validate(events)?;
                if finished {
                    break 'epochs;
                }
                let by_steps = self.config.checkpoint_every > 0
                    && step.is_multiple_of(self.config.checkpoint_every);
                let by_time = self.config.checkpoint_minutes > 0.0
                    && self.last_checkpoint.elapsed().as_secs_f64()
                        >= self.config.checkpoint_minutes * 60.0;
                if by_steps || by_time || best {
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

    /// Forward and backward over one batch, its parts on the replicas in parallel; the raw
    /// losses, real tokens and negatives.
    fn batch(
        &mut self,
        chunk: &[usize],
        acc: &mut Accumulated,
    ) -> anyhow::Result<([f64; 3], usize, usize, Vec<(i64, String)>)> {
        let negatives_config = NegativeConfig {
            ratio: self.config.negative_ratio,
            hard: self.config.hard_negatives,
        };
        let partners = data::draw_partners(chunk, &self.examples, negatives_config, &mut self.rng);
        let mut samples = Vec::with_capacity(chunk.len());
        let mut skipped = Vec::new();
        for (&i, partner) in chunk.iter().zip(&partners) {
            let example = &self.examples[i];
            let image_of = &self.examples[partner.unwrap_or(i)];
            // A record the trainer cannot take is left out of the batch and named; the run goes
            // on (prepare and project edit refuse these texts, this catches older projects and
            // images that went missing or bad since).
            let built = check_training_text("question", &example.question)
                .and_then(|()| check_training_text("diagnosis", &example.answer))
                .map_err(anyhow::Error::msg)
                .and_then(|()| {
                    data::build_sample(example, image_of, &self.tokenizer, &self.processor)
                });
            match built {
                Ok(sample) => samples.push(sample),
                Err(e) if partner.is_some() => skipped.push((
                    example.record_id,
                    format!(
                        "as a negative with the image of record {}: {e:#}",
                        image_of.record_id
                    ),
                )),
                Err(e) => skipped.push((example.record_id, format!("{e:#}"))),
            }
        }
        if samples.is_empty() {
            return Ok(([0.0; 3], 0, 0, skipped));
        }
        let counts = Counts::of(&samples);
        let seed = self.rng.next_u64();
        // The last batch of an epoch may leave a replica without samples.
        let ranges: Vec<std::ops::Range<usize>> =
            devices::split(samples.len(), self.replicas.len())
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect();
        let share = 1.0 / ranges.len() as f64;
        let settings = self.config.losses();
        if let Some(first) = ranges.first() {
            self.check_fits(&samples[first.clone()])?;
        }
        let shards: Vec<Shard> = ranges
            .iter()
            .map(|r| Shard {
                samples: &samples[r.clone()],
                places: r.clone().map(|i| i as u64).collect(),
                counts,
                seed,
                share,
            })
            .collect();
        let results: Vec<anyhow::Result<ShardResult>> = if shards.len() == 1 {
            vec![self.replicas[0].forward_backward(&shards[0], settings)]
        } else {
            // Rayon tasks, not threads of their own: the replicas then compute on the pool the
            // run was started in (the workbench's capped pool leaves a core to the window).
            self.replicas
                .par_iter()
                .zip(shards.par_iter())
                .map(|(replica, shard)| {
                    let run = AssertUnwindSafe(|| replica.forward_backward(shard, settings));
                    std::panic::catch_unwind(run).unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("a replica's computation panicked"))
                    })
                })
                .collect()
        };
        let mut raw = [0f64; 3];
        let mut tokens = 0;
        let mut grads = Vec::with_capacity(results.len());
        for (result, spec) in results.into_iter().zip(&self.devices) {
            let part = result.with_context(|| format!("on {spec}"))?;
            for (r, l) in raw.iter_mut().zip(part.losses) {
                *r += l;
            }
            tokens += part.tokens;
            grads.push(part.grads);
        }
        let s: Vec<f32> = self.replicas[0].task.s.to_vec1()?;
        if raw
            .iter()
            .copied()
            .chain(s.iter().map(|&v| f64::from(v)))
            .any(|v| !v.is_finite())
        {
            bail!(
                "the loss is not finite at step {} (roi {}, match {}, lm {}); the run stops, the last \
                 checkpoint is kept",
                self.opt.step + 1,
                raw[0],
                raw[1],
                raw[2]
            );
        }
        acc.add_named(devices::reduce(grads, self.replicas[0].device())?)?;
        let negatives = samples.iter().filter(|s| s.negative).count();
        Ok((raw, tokens, negatives, skipped))
    }

    /// Refuses a batch part that the first replica's device has no room for (the estimate of
    /// `memory::step_bytes` against its free memory), naming the settings that change it, before
    /// anything of it runs: a run that cannot fit stops with a message instead of being killed.
    fn check_fits(&self, part: &[data::Sample]) -> anyhow::Result<()> {
        let replica = &self.replicas[0];
        let Some(free) = memory::available_bytes(replica.device()) else {
            return Ok(());
        };
        let patches = |s: &data::Sample| s.image.grid_thw.iter().map(|&d| d as usize).product();
        let shape = memory::StepShape {
            samples: part.len(),
            tokens: part.iter().map(|s| s.ids.len()).max().unwrap_or(0),
            patches: part.iter().map(patches).sum(),
            largest_image: part.iter().map(patches).max().unwrap_or(0),
        };
        let model = &replica.model;
        let settings = memory::StepSettings {
            recompute: replica.recomputes(),
            activation_bytes: model.dtype().size_in_bytes(),
            lm_chunk: self.config.lm_chunk,
            lm_rows: part
                .iter()
                .filter(|s| !s.negative)
                .map(|s| s.answer.len())
                .sum(),
            trainable_parameters: self.trainable_parameters(),
            vision_trains: replica
                .lora
                .modules
                .iter()
                .any(|m| m.starts_with("model.visual.")),
        };
        let need = memory::step_bytes(model.config(), shape, settings);
        ensure!(
            need <= free,
            "this batch needs about {} for its step but only {} is free ({} samples of up to {} \
             tokens, {} image patches on {}). Lower batch_size (now {}), max_image_pixels (now \
             {}), set recompute = true{} in the training settings, or free memory.",
            memory::gib(need),
            memory::gib(free),
            shape.samples,
            shape.tokens,
            shape.patches,
            self.devices[0],
            self.config.batch_size,
            self.config.max_image_pixels,
            if model.storage_dtype() == candle_core::DType::F32 {
                " or base_dtype = \"bf16\""
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Writes `checkpoint-<step>/` durably (see [`super::checkpoint`]): the adapter in peft's
    /// layout, the heads and task weights, the optimiser's moments and the run's state; then
    /// keeps the newest `keep_checkpoints`.
    fn checkpoint(&mut self, events: &Sender<Event>) -> anyhow::Result<PathBuf> {
        let step = self.opt.step;
        let state = serde_json::to_value(TrainerState {
            step,
            config: self.config.clone(),
            tasks: TASKS.iter().map(ToString::to_string).collect(),
            model: self.model_dir.clone(),
            position: self.position.clone(),
            rng: self.rng.state().to_string(),
            best: self.best,
        })?;
        let protect: Vec<PathBuf> = self
            .best
            .iter()
            .map(|(s, _)| self.out.join(format!("checkpoint-{s}")))
            .collect();
        let first = &self.replicas[0];
        let (model_dir, opt) = (&self.model_dir, &self.opt);
        let dir = write_checkpoint(
            &self.out,
            step,
            state,
            self.config.keep_checkpoints,
            &protect,
            |staging| {
                let adapter = staging.join("adapter");
                first
                    .lora
                    .save_peft(&adapter, &model_dir.display().to_string())
                    .with_context(|| format!("cannot write {}", adapter.display()))?;
                let heads: std::collections::HashMap<String, Tensor> = first
                    .heads_vars
                    .data()
                    .lock()
                    .expect("heads varmap")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                    .collect();
                let path = staging.join("heads.safetensors");
                candle_core::safetensors::save(&heads, &path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let mut moments = std::collections::HashMap::new();
                for (name, (m, v)) in &opt.moments {
                    moments.insert(format!("m.{name}"), m.clone());
                    moments.insert(format!("v.{name}"), v.clone());
                }
                let path = staging.join("optimizer.safetensors");
                candle_core::safetensors::save(&moments, &path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(())
            },
        )
        .with_context(|| {
            format!(
                "the checkpoint at step {step} could not be written; the run's earlier \
                 checkpoints in {} are kept",
                self.out.display()
            )
        })?;
        self.last_checkpoint = Instant::now();
        if let Some((best_step, score)) = self.best.filter(|(s, _)| *s == step) {
            let metric = self.config.best_metric;
            let value = if metric == BestMetric::Loss {
                -score
            } else {
                score
            };
            let record = serde_json::json!({
                "step": best_step,
                "dir": dir,
                "metric": metric,
                "value": value,
            });
            crate::data::files::write_durable_bytes(
                &self.out.join("best.json"),
                (serde_json::to_string_pretty(&record)? + "\n").as_bytes(),
            )?;
        }
        let _ = events.send(Event::Checkpoint {
            step,
            dir: dir.clone(),
        });
        Ok(dir)
    }
}

/// The image processor a run trains with: the model's, with images over `max_pixels` scaled
/// down to fit (`max_image_pixels`).
pub fn with_pixel_budget(
    mut processor: ImageProcessorConfig,
    max_pixels: u64,
) -> ImageProcessorConfig {
    processor.max_pixels = processor.max_pixels.min(max_pixels);
    processor.min_pixels = processor.min_pixels.min(processor.max_pixels);
    processor
}

/// The settings a checkpoint was trained with (its `trainer_state.json`).
pub fn checkpoint_config(ckpt: &Path) -> anyhow::Result<TrainConfig> {
    Ok(TrainerState::read(ckpt)?.config)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048 x 2048 image, which at the processor's own limit is 4,096 image tokens (about
    /// 6.5 GB a step on the 2B model), trains at the default budget as 1,024 of them.
    #[test]
    fn large_images_are_scaled_to_the_pixel_budget() {
        let img = image::RgbImage::from_pixel(2048, 2048, image::Rgb([90, 120, 200]));
        let model = ImageProcessorConfig::qwen3_vl();
        let tokens = |p: &ImageProcessorConfig| {
            let out = crate::model::processor::process_image(&img, p).unwrap();
            out.grid_thw.iter().product::<u32>() / (p.merge_size * p.merge_size)
        };
        assert_eq!(tokens(&model), 4096);
        let budget = TrainConfig::default().max_image_pixels;
        let trained = with_pixel_budget(model.clone(), budget);
        let resized = crate::model::processor::process_image(&img, &trained)
            .unwrap()
            .resized;
        assert!(u64::from(resized.0) * u64::from(resized.1) <= budget);
        assert_eq!(tokens(&trained), 1024);
        // Small images are untouched.
        let small = image::RgbImage::from_pixel(512, 384, image::Rgb([1, 2, 3]));
        let a = crate::model::processor::process_image(&small, &model).unwrap();
        let b = crate::model::processor::process_image(&small, &trained).unwrap();
        assert_eq!(a.grid_thw, b.grid_thw);
    }
}
