//! Qwen3-VL's vision tower: patches to merged image tokens, plus the DeepStack features that
//! are added to the first text layers.

use std::sync::Arc;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::VisionConfig;
use super::grad::{self, GradSink};
use super::ops::{self, Exec, Linear};
use super::positions;

#[derive(Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize) -> Result<Self> {
        Ok(Norm {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor, exec: Exec) -> Result<Tensor> {
        // Both norms of the tower use eps 1e-6 (fixed in the architecture, not in the config).
        ops::layer_norm(x, &self.weight, &self.bias, 1e-6, exec)
    }
}

#[derive(Clone)]
struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    /// The trainable tensors inside the block (its adapters, where LoRA targets the tower).
    fn adapter_tensors(&self) -> Vec<Tensor> {
        [&self.qkv, &self.proj, &self.fc1, &self.fc2]
            .iter()
            .filter_map(|l| l.lora.as_ref())
            .flat_map(|l| [l.a.clone(), l.b.clone()])
            .collect()
    }
}

/// Joins each `merge x merge` group of patches into one token of the text model's width.
#[derive(Clone)]
struct Merger {
    norm: Norm,
    /// DeepStack mergers normalise after joining the group, the final one before.
    norm_after_join: bool,
    fc1: Linear,
    fc2: Linear,
}

impl Merger {
    fn load(vb: VarBuilder, c: &VisionConfig, norm_after_join: bool) -> Result<Self> {
        let joined = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        Ok(Merger {
            norm: Norm::load(
                vb.pp("norm"),
                if norm_after_join {
                    joined
                } else {
                    c.hidden_size
                },
            )?,
            norm_after_join,
            fc1: Linear::load(&vb.pp("linear_fc1"), joined, joined, true)?,
            fc2: Linear::load(&vb.pp("linear_fc2"), c.out_hidden_size, joined, true)?,
        })
    }

    fn forward(&self, x: &Tensor, exec: Exec) -> Result<Tensor> {
        let joined = self.fc1.weight.dim(1)?;
        let rows = x.elem_count() / joined;
        let x = if self.norm_after_join {
            self.norm.forward(&x.reshape((rows, joined))?, exec)?
        } else {
            self.norm.forward(x, exec)?.reshape((rows, joined))?
        };
        // The merger's activation is exact GELU whatever the tower's MLP uses.
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

/// The tower's output for a batch of images.
pub struct VisionOutput {
    /// `(merged tokens, text hidden)`, images one after another.
    pub embeds: Tensor,
    /// One tensor like `embeds` per DeepStack layer.
    pub deepstack: Vec<Tensor>,
}

#[derive(Clone)]
pub struct VisionTower {
    config: VisionConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<Merger>,
    /// Activation recompute per block in training (see `TextModel::set_recompute`); it matters
    /// only where LoRA targets the tower (otherwise nothing in it trains and it keeps no graph).
    recompute: Option<Arc<GradSink>>,
}

impl VisionTower {
    pub fn load(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        let patch_dim = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let pe = vb.pp("patch_embed").pp("proj");
        // A Conv3d whose stride equals its kernel is a matrix product over flattened patches.
        let patch_weight = pe
            .get(
                (
                    c.hidden_size,
                    c.in_channels,
                    c.temporal_patch_size,
                    c.patch_size,
                    c.patch_size,
                ),
                "weight",
            )?
            .reshape((c.hidden_size, patch_dim))?;
        let patch_bias = pe.get(c.hidden_size, "bias")?;
        let pos_embed = vb.get(
            (c.num_position_embeddings, c.hidden_size),
            "pos_embed.weight",
        )?;
        let h = c.hidden_size;
        let blocks = (0..c.depth)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    norm1: Norm::load(b.pp("norm1"), h)?,
                    norm2: Norm::load(b.pp("norm2"), h)?,
                    qkv: Linear::load(&b.pp("attn").pp("qkv"), 3 * h, h, true)?,
                    proj: Linear::load(&b.pp("attn").pp("proj"), h, h, true)?,
                    fc1: Linear::load(&b.pp("mlp").pp("linear_fc1"), c.intermediate_size, h, true)?,
                    fc2: Linear::load(&b.pp("mlp").pp("linear_fc2"), h, c.intermediate_size, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let merger = Merger::load(vb.pp("merger"), c, false)?;
        let deepstack = (0..c.deepstack_visual_indexes.len())
            .map(|j| Merger::load(vb.pp("deepstack_merger_list").pp(j), c, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTower {
            config: c.clone(),
            patch_weight,
            patch_bias,
            pos_embed,
            blocks,
            merger,
            deepstack,
            recompute: None,
        })
    }

    /// `pixel_values`: `(patches, patch_dim)` of all images in order; `grids` their `[t, h, w]`.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        grids: &[[u32; 3]],
        exec: Exec,
    ) -> Result<VisionOutput> {
        let c = &self.config;
        let device = pixel_values.device();
        let dtype = self.patch_weight.dtype();
        let m = c.spatial_merge_size;
        let x = pixel_values
            .to_dtype(dtype)?
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?;
        let n = x.dim(0)?;
        let (idx, wts) = positions::position_taps(grids, m, c.position_grid_side());
        if idx.len() != 4 * n {
            candle_core::bail!(
                "{n} patches given, the image grids {grids:?} need {}",
                idx.len() / 4
            );
        }
        let taps = self
            .pos_embed
            .index_select(&Tensor::from_vec(idx, 4 * n, device)?, 0)?
            .reshape((n, 4, c.hidden_size))?;
        let weights = Tensor::from_vec(wts, (n, 4, 1), device)?.to_dtype(dtype)?;
        let mut x = (x + taps.broadcast_mul(&weights)?.sum(1)?)?;

        let rows_cols = positions::vision_patch_rows_cols(grids, m);
        let (cos, sin) = positions::vision_rotary(&rows_cols, c.rope_theta, c.head_dim(), device)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        // Attention stays within each image (and each frame of it).
        let mut segments = Vec::new();
        let mut start = 0;
        for &[t, h, w] in grids {
            for _ in 0..t {
                let len = (h * w) as usize;
                segments.push((start, len));
                start += len;
            }
        }

        let mut deepstack = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let params = block.adapter_tensors();
            x = match &self.recompute {
                Some(sink) if exec == Exec::Differentiable && !params.is_empty() => {
                    let (c, b) = (self.config.clone(), block.clone());
                    let (cos, sin, segments) = (cos.clone(), sin.clone(), segments.clone());
                    let f: grad::Block = Arc::new(move |x: &Tensor| {
                        block_forward(&c, &b, x, &cos, &sin, &segments, exec)
                    });
                    grad::checkpoint(&x, f, params, sink.clone())?
                }
                _ => block_forward(&self.config, block, &x, &cos, &sin, &segments, exec)?,
            };
            if let Some(j) = c.deepstack_visual_indexes.iter().position(|&d| d == i) {
                deepstack.push(self.deepstack[j].forward(&x, exec)?);
            }
        }
        Ok(VisionOutput {
            embeds: self.merger.forward(&x, exec)?,
            deepstack,
        })
    }

    /// Every linear layer with its module name under `prefix` (as transformers names it).
    pub fn linears_mut(&mut self, prefix: &str) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("{prefix}.blocks.{i}");
            out.push((format!("{p}.attn.qkv"), &mut b.qkv));
            out.push((format!("{p}.attn.proj"), &mut b.proj));
            out.push((format!("{p}.mlp.linear_fc1"), &mut b.fc1));
            out.push((format!("{p}.mlp.linear_fc2"), &mut b.fc2));
        }
        let mergers = std::iter::once((format!("{prefix}.merger"), &mut self.merger)).chain(
            self.deepstack
                .iter_mut()
                .enumerate()
                .map(|(j, m)| (format!("{prefix}.deepstack_merger_list.{j}"), m)),
        );
        for (p, m) in mergers {
            out.push((format!("{p}.linear_fc1"), &mut m.fc1));
            out.push((format!("{p}.linear_fc2"), &mut m.fc2));
        }
        out
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.pos_embed.device()
    }

    /// Whether anything in the tower trains: LoRA sits in it, or its own weights are variables
    /// (a model loaded from a variable map). Otherwise it keeps no graph.
    pub fn trains(&self) -> bool {
        self.patch_weight.track_op()
            || self.pos_embed.track_op()
            || self.blocks.iter().any(|b| {
                b.qkv.weight.track_op()
                    || b.norm1.weight.track_op()
                    || !b.adapter_tensors().is_empty()
            })
            || std::iter::once(&self.merger)
                .chain(&self.deepstack)
                .any(|m| m.fc1.lora.is_some() || m.fc2.lora.is_some() || m.fc1.weight.track_op())
    }

    /// See [`Self::recompute`].
    pub fn set_recompute(&mut self, sink: Option<Arc<GradSink>>) {
        self.recompute = sink;
    }
}

/// One block of the tower over `x` `(patches, hidden)`.
fn block_forward(
    c: &VisionConfig,
    b: &Block,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[(usize, usize)],
    exec: Exec,
) -> Result<Tensor> {
    let (n, heads, hd) = (x.dim(0)?, c.num_heads, c.head_dim());
    let qkv = b
        .qkv
        .forward(&b.norm1.forward(x, exec)?)?
        .reshape((n, 3, heads, hd))?
        .permute((1, 2, 0, 3))?; // (3, heads, n, hd)
    let q = ops::rope(&qkv.get(0)?.unsqueeze(0)?, cos, sin, exec)?;
    let k = ops::rope(&qkv.get(1)?.unsqueeze(0)?, cos, sin, exec)?;
    let v = qkv.get(2)?.unsqueeze(0)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut outs = Vec::with_capacity(segments.len());
    for &(start, len) in segments {
        let q = q.narrow(2, start, len)?.contiguous()?;
        let k = k.narrow(2, start, len)?.contiguous()?;
        let v = v.narrow(2, start, len)?.contiguous()?;
        outs.push(ops::attention(&q, &k, &v, None, scale, exec)?);
    }
    let att = Tensor::cat(&outs, 2)?; // (1, heads, n, hd)
    let att = att.squeeze(0)?.transpose(0, 1)?.reshape((n, heads * hd))?;
    let x = (x + b.proj.forward(&att)?)?;
    let hidden = c
        .hidden_act
        .apply(&b.fc1.forward(&b.norm2.forward(&x, exec)?)?)?;
    x + b.fc2.forward(&hidden)?
}
