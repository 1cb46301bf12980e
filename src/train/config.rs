//! The settings of a run (`train.toml`): every key optional, validated before a run starts,
//! and the ablation presets.

use std::path::Path;

use anyhow::{ensure, Context};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::data::NegativeConfig;
use super::lora::LoraConfig;
use super::losses::{FocalConfig, RoiLossConfig};
use super::replica::LossSettings;
use super::validation::BestMetric;

/// Everything a run is configured by (`train.toml`); every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many optimiser steps (0: run all epochs).
    pub max_steps: usize,
    /// Samples per batch, over all devices together (each device takes a part).
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
    /// Weights of the ROI loss's SmoothL1 (summed over the coordinates) and `1 - GIoU`.
    pub roi_l1_weight: f64,
    pub roi_giou_weight: f64,
    /// Weight of the focus loss (where the ROI pooling looks, against the tokens inside the box;
    /// `losses::focus_loss`) within the ROI loss.
    pub roi_focus_weight: f64,
    /// Rows of vocabulary-wide logits made at once for the LM loss.
    pub lm_chunk: usize,
    // Run safety (issue 21): checkpoints that bound what a crash, a signal or a full disk can
    // lose.
    /// Write a checkpoint every this many steps (0: not by steps).
    pub checkpoint_every: usize,
    /// Also write one when this many minutes have passed since the last (0: not by time).
    pub checkpoint_minutes: f64,
    /// Checkpoints kept, the newest (at least 1); older ones are removed only once a newer one
    /// is complete on disk.
    pub keep_checkpoints: usize,
    /// Validate on the val split every this many steps and at the end (0: never).
    pub validate_every: usize,
    /// Records of the val split validated on (the first ones, in the project's order).
    pub val_examples: usize,
    /// The validation number whose best value keeps its checkpoint (`best.json` names it).
    pub best_metric: BestMetric,
    /// Training images with more pixels are scaled down to about this many (aspect kept)
    /// before they become patches: image tokens, and so memory, grow with pixels.
    pub max_image_pixels: u64,
    /// The dtype the frozen base weights are kept in: `bf16` (half the memory; on the CPU they
    /// are widened to f32 one matrix at a time for their product), `f32`, or `auto`: bf16 on a
    /// GPU, f32 on the CPU. Adapters, heads and losses are f32 whatever this says.
    pub base_dtype: BaseDtype,
    /// Activation recompute per decoder layer: only each layer's input is kept through the
    /// forward pass and the layer is computed again in backward (about a third more compute,
    /// a fraction of the memory). Unset: on for models of 1B parameters or more.
    pub recompute: Option<bool>,
    // Which tasks train and how they are weighted (issue 22: the ablation presets,
    // [`TrainConfig::apply_preset`]).
    /// Train the ROI head: its loss and its task weight count.
    pub train_roi: bool,
    /// Train the match head: its loss and its task weight count (negatives only serve it).
    pub train_match: bool,
    /// Learn the task weights `s_i`; false keeps every `s_i` at 0 (each loss weighted 0.5).
    pub learn_task_weights: bool,
}

/// See [`TrainConfig::base_dtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    #[default]
    Auto,
    Bf16,
    F32,
}

impl BaseDtype {
    /// The dtype on `device`.
    pub fn resolve(self, device: &Device) -> candle_core::DType {
        match self {
            BaseDtype::Bf16 => candle_core::DType::BF16,
            BaseDtype::F32 => candle_core::DType::F32,
            BaseDtype::Auto if device.is_cuda() => candle_core::DType::BF16,
            BaseDtype::Auto => candle_core::DType::F32,
        }
    }

    pub const ALL: [BaseDtype; 3] = [BaseDtype::Auto, BaseDtype::Bf16, BaseDtype::F32];

    pub fn name(self) -> &'static str {
        match self {
            BaseDtype::Auto => "auto",
            BaseDtype::Bf16 => "bf16",
            BaseDtype::F32 => "f32",
        }
    }
}

/// Base models of this many parameters or more recompute activations unless told otherwise.
pub(super) const RECOMPUTE_FROM_PARAMETERS: usize = 1_000_000_000;

/// The ablation presets (`roiscope train --preset`): name and what it trains.
pub const PRESETS: [(&str, &str); 4] = [
    ("sft", "the LM alone (plain SFT): no ROI or match loss, no negatives"),
    ("sft-roi", "the LM and the ROI head: no match loss, no negatives"),
    (
        "multitask",
        "the LM, the ROI head and the match head with negatives, learned task weights (the defaults)",
    ),
    (
        "multitask-fixed",
        "as multitask, with the task weights fixed at 0.5 each",
    ),
];

impl Default for TrainConfig {
    fn default() -> Self {
        let lora = LoraConfig::default();
        let focal = FocalConfig::default();
        let roi = RoiLossConfig::default();
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
            roi_smooth_l1_beta: roi.beta,
            roi_l1_weight: roi.l1_weight,
            roi_giou_weight: roi.giou_weight,
            roi_focus_weight: roi.focus_weight,
            lm_chunk: 128,
            checkpoint_every: 500,
            checkpoint_minutes: 30.0,
            keep_checkpoints: 3,
            validate_every: 500,
            val_examples: 256,
            best_metric: BestMetric::RoiIou,
            // 1024 x 1024: 1,024 image tokens a sample (Qwen3-VL merges 32 x 32 pixels into
            // one), meant for a 12 GB GPU; the processor's own limit (16.7 megapixels) allows
            // 16,000, and a 2048 x 2048 image at 4,096 took 6.5 GB a step (issue 21).
            max_image_pixels: 1 << 20,
            base_dtype: BaseDtype::Auto,
            recompute: None,
            train_roi: true,
            train_match: true,
            learn_task_weights: true,
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

    /// Sets the switches of ablation preset `name` ([`PRESETS`]); everything else stays.
    pub fn apply_preset(&mut self, name: &str) -> anyhow::Result<()> {
        let (roi, matcher, learn) = match name {
            "sft" => (false, false, true),
            "sft-roi" => (true, false, true),
            "multitask" => (true, true, true),
            "multitask-fixed" => (true, true, false),
            other => anyhow::bail!(
                "unknown preset {other:?}; the presets are {}",
                PRESETS.map(|p| p.0).join(", ")
            ),
        };
        self.train_roi = roi;
        self.train_match = matcher;
        self.learn_task_weights = learn;
        if !matcher {
            self.negative_ratio = 0.0;
        }
        Ok(())
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
        ensure!(
            self.roi_l1_weight >= 0.0
                && self.roi_giou_weight >= 0.0
                && self.roi_l1_weight + self.roi_giou_weight > 0.0,
            "roi_l1_weight and roi_giou_weight cannot be negative, and not both 0"
        );
        ensure!(
            self.roi_focus_weight >= 0.0 && self.roi_focus_weight.is_finite(),
            "roi_focus_weight cannot be negative"
        );
        ensure!(
            self.roi_smooth_l1_beta > 0.0,
            "roi_smooth_l1_beta must be above 0"
        );
        ensure!(
            self.checkpoint_minutes >= 0.0 && self.checkpoint_minutes.is_finite(),
            "checkpoint_minutes cannot be negative"
        );
        ensure!(
            self.keep_checkpoints >= 1,
            "keep_checkpoints must be at least 1"
        );
        ensure!(
            self.max_image_pixels >= 65_536,
            "max_image_pixels must be at least 65536 (256 x 256)"
        );
        Ok(())
    }

    pub(super) fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        }
    }

    pub(super) fn losses(&self) -> LossSettings {
        LossSettings {
            focal: FocalConfig {
                alpha: self.focal_alpha,
                gamma: self.focal_gamma,
                missed_weight: self.missed_diagnosis_weight,
            },
            roi: RoiLossConfig {
                beta: self.roi_smooth_l1_beta,
                l1_weight: self.roi_l1_weight,
                giou_weight: self.roi_giou_weight,
                focus_weight: self.roi_focus_weight,
            },
            lm_chunk: self.lm_chunk,
            tasks: [self.train_roi, self.train_match, true],
            learn_task_weights: self.learn_task_weights,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file with an ROI loss that cannot work is refused with the setting's name.
    #[test]
    fn bad_roi_loss_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        for (text, named) in [
            ("roi_l1_weight = -1.0\n", "roi_l1_weight"),
            (
                "roi_l1_weight = 0.0\nroi_giou_weight = 0.0\n",
                "roi_giou_weight",
            ),
            ("roi_smooth_l1_beta = 0.0\n", "roi_smooth_l1_beta"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = TrainConfig::from_toml_file(&path).unwrap_err();
            assert!(format!("{err:#}").contains(named), "{text}: {err:#}");
        }
        std::fs::write(&path, "roi_l1_weight = 1.0\nroi_giou_weight = 0.0\n").unwrap();
        assert!(TrainConfig::from_toml_file(&path).is_ok());
    }

    /// The ablation presets switch the tasks and weights they name and nothing else; an unknown
    /// one is refused with the list.
    #[test]
    fn presets_set_their_switches() {
        let base = TrainConfig {
            lr_heads: 2e-3,
            ..TrainConfig::default()
        };
        let with = |name: &str| {
            let mut c = base.clone();
            c.apply_preset(name).unwrap();
            c
        };
        let sft = with("sft");
        assert!(!sft.train_roi && !sft.train_match && sft.negative_ratio == 0.0);
        assert_eq!(sft.lr_heads, 2e-3);
        let roi = with("sft-roi");
        assert!(roi.train_roi && !roi.train_match && roi.negative_ratio == 0.0);
        assert_eq!(with("multitask"), base);
        let fixed = with("multitask-fixed");
        assert!(!fixed.learn_task_weights && fixed.negative_ratio == base.negative_ratio);
        let err = base.clone().apply_preset("lora").unwrap_err().to_string();
        assert!(
            err.contains("sft-roi") && err.contains("multitask-fixed"),
            "{err}"
        );
    }
}
