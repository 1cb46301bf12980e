//! One model replica: the frozen base model on a device, its LoRA adapters, the heads and the
//! task weights. Data-parallel training runs one replica per device on its part of each batch;
//! the replicas start identical (same seeds) and stay identical (one optimiser step, its result
//! copied to every replica).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::data::{self, Counts, Sample};
use super::heads::{run_heads, HeadsConfig, MatchHead, RoiHead, TaskWeights};
use super::lora::{self, LoraConfig, LoraSet};
use super::losses::{self, FocalConfig, RoiLossConfig};
use crate::model::dropout::{Dropout, DropoutPlan};
use crate::model::grad::GradSink;
use crate::model::ops::Exec;
use crate::model::qwen3_vl::Qwen3Vl;
use crate::model::random::SplitMix;

/// Loss settings a replica needs for its forward pass.
#[derive(Debug, Clone, Copy)]
pub struct LossSettings {
    pub focal: FocalConfig,
    pub roi: RoiLossConfig,
    pub lm_chunk: usize,
    /// Which tasks (roi, match, lm) train.
    pub tasks: [bool; 3],
    /// False: the task weights stay where they are (no gradient).
    pub learn_task_weights: bool,
}

/// A replica's part of one batch.
pub struct Shard<'a> {
    pub samples: &'a [Sample],
    /// Each sample's place in the whole batch (it keys the dropout masks).
    pub places: Vec<u64>,
    /// The whole batch's counts, which every loss is divided by.
    pub counts: Counts,
    /// Dropout seed of the whole batch.
    pub seed: u64,
    /// `1 / replicas`: this replica's share of the task weights' regulariser.
    pub share: f64,
}

/// What a replica's part of a batch gave.
pub struct ShardResult {
    /// This part's contribution to each raw task loss (the parts add up to the batch's).
    pub losses: [f64; 3],
    /// Gradients of the trainable parameters by name.
    pub grads: HashMap<String, Tensor>,
    pub tokens: usize,
    /// The forward pass's outputs, outside the graph (the parity proof compares them).
    pub outputs: PassOutputs,
}

/// What the forward pass computed on the way to the losses.
pub struct PassOutputs {
    /// `(batch, seq, hidden)` final hidden states, f32.
    pub hidden: Tensor,
    /// `(batch, 4)` ROI boxes and `(batch)` match logits.
    pub boxes: Tensor,
    pub logits: Tensor,
    /// `(3)` weighted terms and the total.
    pub terms: Tensor,
    pub total: Tensor,
}

/// What the heads say about one (image, text) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// `x1, y1, x2, y2`, image-relative.
    pub roi: [f32; 4],
    pub match_probability: f32,
}

/// What [`Replica::forward_losses`] computed (in the graph when training).
struct Losses {
    /// `(3)` raw task losses: roi, match, lm.
    losses: Tensor,
    hidden: Tensor,
    boxes: Tensor,
    logits: Tensor,
}

/// Per sample, the ROI box and the match probability from the heads' outputs.
fn predictions(boxes: &Tensor, logits: &Tensor) -> anyhow::Result<Vec<Prediction>> {
    let logits: Vec<f32> = logits.to_vec1()?;
    let boxes: Vec<Vec<f32>> = boxes.to_vec2()?;
    Ok(boxes
        .into_iter()
        .zip(logits)
        .map(|(b, logit)| Prediction {
            roi: [b[0], b[1], b[2], b[3]],
            match_probability: 1.0 / (1.0 + (-logit).exp()),
        })
        .collect())
}

/// The heads a replica is made with.
struct Heads {
    roi: RoiHead,
    matcher: MatchHead,
    task: TaskWeights,
}

pub struct Replica {
    pub model: Qwen3Vl,
    pub lora: LoraSet,
    /// Heads and task weights (`roi.*`, `match.*`, `task.log_vars`).
    pub heads_vars: VarMap,
    roi: RoiHead,
    matcher: MatchHead,
    pub task: TaskWeights,
    dropout: Arc<Dropout>,
    /// Where the adapters inside recomputed layers leave their gradients (activation recompute
    /// on), else `None`.
    recompute: Option<Arc<GradSink>>,
    /// `(pad, image_pad)` token ids.
    special: (u32, u32),
}

/// Overwrites every variable with seeded uniform values within `1 / sqrt(fan_in)` (zero for the
/// task weights), in name order, so a seed fixes the heads' start.
fn seed_heads(vars: &VarMap, seed: u64) -> anyhow::Result<()> {
    let mut rng = SplitMix::new(seed);
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

/// Named variables, sorted by name.
pub type NamedVars = Vec<(String, Var)>;

/// A variable map's variables sorted by name.
pub fn sorted_vars(vars: &VarMap) -> NamedVars {
    let mut v: Vec<(String, Var)> = vars
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Replica {
    /// Attaches fresh adapters (from `lora_seed`) and heads (from `heads_seed`) to `model`:
    /// replicas built with the same seeds are identical. `recompute`: activation recompute per
    /// decoder layer in training.
    pub fn new(
        mut model: Qwen3Vl,
        lora_config: &LoraConfig,
        seeds: (u64, u64),
        special: (u32, u32),
        recompute: bool,
    ) -> anyhow::Result<Self> {
        let device = model.device().clone();
        let lora = lora::attach(&mut model, lora_config, seeds.0, &device)?;
        let heads_vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&heads_vars, DType::F32, &device);
        let hidden = model.config().text.hidden_size;
        let heads_config = HeadsConfig::default();
        let heads = Heads {
            roi: RoiHead::load(vb.pp("roi"), hidden, &heads_config)?,
            matcher: MatchHead::load(vb.pp("match"), hidden, &heads_config)?,
            task: TaskWeights::load(vb.pp("task"))?,
        };
        seed_heads(&heads_vars, seeds.1)?;
        Ok(Self::assemble(
            model, lora, heads_vars, heads, special, recompute,
        ))
    }

    /// A replica from a model with `lora` attached and heads made from `heads_vars` (the
    /// parity proof loads both from files).
    pub fn from_parts(
        model: Qwen3Vl,
        lora: LoraSet,
        heads_vars: VarMap,
        config: &HeadsConfig,
        special: (u32, u32),
        recompute: bool,
    ) -> anyhow::Result<Self> {
        let vb = VarBuilder::from_varmap(&heads_vars, DType::F32, model.device());
        let hidden = model.config().text.hidden_size;
        let heads = Heads {
            roi: RoiHead::load(vb.pp("roi"), hidden, config)?,
            matcher: MatchHead::load(vb.pp("match"), hidden, config)?,
            task: TaskWeights::load(vb.pp("task"))?,
        };
        Ok(Self::assemble(
            model, lora, heads_vars, heads, special, recompute,
        ))
    }

    fn assemble(
        mut model: Qwen3Vl,
        lora: LoraSet,
        heads_vars: VarMap,
        heads: Heads,
        special: (u32, u32),
        recompute: bool,
    ) -> Self {
        let dropout = Arc::new(Dropout::default());
        lora::set_dropout(&mut model, Some(dropout.clone()));
        let recompute = recompute.then(|| Arc::new(GradSink::default()));
        model.set_recompute(recompute.clone());
        Replica {
            model,
            lora,
            heads_vars,
            roi: heads.roi,
            matcher: heads.matcher,
            task: heads.task,
            dropout,
            recompute,
            special,
        }
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Whether this replica recomputes activations in backward.
    pub fn recomputes(&self) -> bool {
        self.recompute.is_some()
    }

    /// The trainable parameters: (adapters, heads and task weights), each sorted by name.
    pub fn trainable(&self) -> (NamedVars, NamedVars) {
        (
            sorted_vars(&self.lora.varmap),
            sorted_vars(&self.heads_vars),
        )
    }

    /// Forward and backward over this replica's part of a batch.
    pub fn forward_backward(
        &self,
        shard: &Shard,
        settings: LossSettings,
    ) -> anyhow::Result<ShardResult> {
        let device = self.device();
        let batch = data::collate(shard.samples, self.special.0, self.special.1, device)?;
        let plan = DropoutPlan {
            seed: shard.seed,
            samples: shard.places.clone(),
            image_patches: shard
                .samples
                .iter()
                .map(|s| s.image.grid_thw.iter().map(|&d| d as usize).product())
                .collect(),
        };
        if let Some(sink) = &self.recompute {
            sink.clear();
        }
        // Dropout stays on until the backward pass is over: recomputed layers draw their masks
        // again.
        self.dropout.begin(plan.clone());
        let result = self.losses_and_gradients(&batch, &plan, shard, settings);
        self.dropout.end();
        let (values, outputs, grads) = result?;
        let (adapters, heads) = self.trainable();
        let mut named = HashMap::new();
        for (name, var) in adapters.iter().chain(&heads) {
            let outer = grads.get(var.as_tensor()).cloned();
            let inner = self
                .recompute
                .as_ref()
                .and_then(|sink| sink.take(var.as_tensor()));
            let g = match (outer, inner) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
            if let Some(g) = g {
                named.insert(name.clone(), g);
            }
        }
        Ok(ShardResult {
            losses: values,
            grads: named,
            tokens: batch.tokens,
            outputs,
        })
    }

    /// The forward pass, the three losses combined with the task weights, and the backward pass:
    /// the raw losses and the gradients.
    fn losses_and_gradients(
        &self,
        batch: &data::Batch,
        plan: &DropoutPlan,
        shard: &Shard,
        settings: LossSettings,
    ) -> anyhow::Result<([f64; 3], PassOutputs, candle_core::backprop::GradStore)> {
        let pass = self.forward_losses(
            batch,
            Exec::Differentiable,
            Some(plan),
            shard.counts,
            settings,
        )?;
        let (hidden, boxes, logits, stacked) = (pass.hidden, pass.boxes, pass.logits, pass.losses);
        let present = shard.counts.present();
        let present = [0, 1, 2].map(|i| present[i] && settings.tasks[i]);
        let task = if settings.learn_task_weights {
            TaskWeights {
                s: self.task.s.clone(),
            }
        } else {
            TaskWeights {
                s: self.task.s.detach(),
            }
        };
        let (total, terms) = task.combine(&stacked, present, shard.share)?;
        let values: Vec<f32> = stacked.to_vec1()?;
        let grads = total.backward()?;
        let outputs = PassOutputs {
            hidden: hidden.detach(),
            boxes: boxes.detach(),
            logits: logits.detach(),
            terms: terms.detach(),
            total: total.detach(),
        };
        Ok((
            [values[0], values[1], values[2]].map(f64::from),
            outputs,
            grads,
        ))
    }

    /// The heads' outputs for `samples` without dropout or gradients (evaluation): per sample
    /// the ROI box (`x1, y1, x2, y2`, image-relative) and the match probability of the pair.
    pub fn predict(&self, samples: &[Sample]) -> anyhow::Result<Vec<Prediction>> {
        let batch = data::collate(samples, self.special.0, self.special.1, self.device())?;
        let out = self.model.forward(&batch.input, Exec::Fused)?;
        let hidden = out.hidden.to_dtype(DType::F32)?;
        let embeds = self.model.token_embeddings(&batch.input)?;
        let (boxes, logits, _) =
            run_heads(&self.roi, &self.matcher, &hidden, &embeds, &batch, None)?;
        predictions(&boxes, &logits)
    }

    /// The raw task losses of `samples` as one batch (without dropout or gradients) and the
    /// heads' predictions: validation (issue 21).
    pub fn evaluate(
        &self,
        samples: &[Sample],
        settings: LossSettings,
    ) -> anyhow::Result<([f64; 3], Vec<Prediction>)> {
        let batch = data::collate(samples, self.special.0, self.special.1, self.device())?;
        let pass = self.forward_losses(&batch, Exec::Fused, None, Counts::of(samples), settings)?;
        let values: Vec<f32> = pass.losses.to_vec1()?;
        let losses = [values[0], values[1], values[2]].map(f64::from);
        Ok((losses, predictions(&pass.boxes, &pass.logits)?))
    }

    /// The forward pass, the heads and the three raw task losses `(3)` of `batch`, each divided
    /// by `counts`; dropout follows `plan` (none without one).
    fn forward_losses(
        &self,
        batch: &data::Batch,
        exec: Exec,
        plan: Option<&DropoutPlan>,
        counts: Counts,
        settings: LossSettings,
    ) -> anyhow::Result<Losses> {
        let out = self.model.forward(&batch.input, exec)?;
        let hidden = out.hidden.to_dtype(DType::F32)?;
        let embeds = self.model.token_embeddings(&batch.input)?;
        let (boxes, logits, log_weights) =
            run_heads(&self.roi, &self.matcher, &hidden, &embeds, batch, plan)?;
        let focus = losses::focus_loss(
            &log_weights,
            &batch.coords,
            &batch.image_mask,
            &batch.roi_target,
            &batch.roi_weight,
            counts.roi_rows,
        )?;
        let l_roi = (losses::roi_loss(
            &boxes,
            &batch.roi_target,
            &batch.roi_weight,
            settings.roi,
            counts.roi_rows,
        )? + (focus * settings.roi.focus_weight)?)?;
        let l_match = losses::focal_loss(&logits, &batch.labels, settings.focal, counts.samples)?;
        let l_lm = losses::lm_loss(
            &hidden,
            self.model.lm_head(),
            &batch.lm_targets,
            settings.lm_chunk,
            counts.lm_targets,
        )?;
        Ok(Losses {
            losses: Tensor::stack(&[&l_roi, &l_match, &l_lm], 0)?,
            hidden,
            boxes,
            logits,
        })
    }

    /// Sets every trainable parameter to `source`'s values (after the optimiser step on the
    /// first replica).
    pub fn copy_from(&self, source: &Replica) -> anyhow::Result<()> {
        let (a, h) = self.trainable();
        let (sa, sh) = source.trainable();
        for ((name, var), (source_name, source_var)) in a.iter().chain(&h).zip(sa.iter().chain(&sh))
        {
            anyhow::ensure!(
                name == source_name,
                "replicas differ: {name} vs {source_name}"
            );
            var.set(&source_var.as_tensor().to_device(self.device())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeding the heads randomises them from the seed: the same seed gives the same start,
    /// another seed another one, and the task weights start at 0.
    #[test]
    fn seeding_fixes_the_start() {
        let values = |seed: u64| {
            let vars = VarMap::new();
            let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
            MatchHead::load(vb.pp("match"), 8, &HeadsConfig::default()).unwrap();
            TaskWeights::load(vb.pp("task")).unwrap();
            seed_heads(&vars, seed).unwrap();
            sorted_vars(&vars)
                .iter()
                .map(|(n, v)| {
                    let t: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                    (n.clone(), t)
                })
                .collect::<Vec<_>>()
        };
        let (a, b, c) = (values(7), values(7), values(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let (_, task) = a.iter().find(|(n, _)| n == "task.log_vars").unwrap();
        assert!(task.iter().all(|&v| v == 0.0));
        let (_, text) = a.iter().find(|(n, _)| n == "match.text.weight").unwrap();
        assert!(
            text.iter().any(|&v| v != text[0]),
            "random layers are random"
        );
    }
}
