//! Qwen3-VL for conditional generation: the vision tower's tokens replace the `<|image_pad|>`
//! embeddings, DeepStack features join the first text layers, and the language-model head
//! (tied to the embeddings or not) turns hidden states into logits.
//!
//! [`Qwen3Vl::forward`] returns the final hidden states and where the image tokens are, so task
//! heads can sit on top; [`Qwen3Vl::prefill`] and [`Qwen3Vl::step`] run generation with a cache.

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::Qwen3VlConfig;
use super::ops::Exec;
use super::positions::{self, MropePositions};
use super::text::{self, KvCache, TextModel};
use super::vision::VisionTower;

/// A padded batch of prompts and their images.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// Rows of equal length.
    pub input_ids: Vec<Vec<u32>>,
    /// `false` at padding.
    pub valid: Vec<Vec<bool>>,
    /// `(patches, patch_dim)` of every image, in the order the images appear in the batch.
    pub pixel_values: Option<Tensor>,
    pub image_grid_thw: Vec<[u32; 3]>,
}

impl ModelInput {
    /// One prompt, no padding.
    pub fn single(ids: Vec<u32>, pixel_values: Option<Tensor>, grids: Vec<[u32; 3]>) -> Self {
        let n = ids.len();
        ModelInput {
            input_ids: vec![ids],
            valid: vec![vec![true; n]],
            pixel_values,
            image_grid_thw: grids,
        }
    }

    /// Prompts of different lengths, padded on the left with `pad_id` so generation continues
    /// every row at its end.
    pub fn left_padded(
        rows: Vec<Vec<u32>>,
        pad_id: u32,
        pixel_values: Option<Tensor>,
        grids: Vec<[u32; 3]>,
    ) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(rows.len());
        let mut valid = Vec::with_capacity(rows.len());
        for row in rows {
            let pad = len - row.len();
            let mut ids = vec![pad_id; pad];
            ids.extend(row);
            input_ids.push(ids);
            let mut v = vec![false; pad];
            v.resize(len, true);
            valid.push(v);
        }
        ModelInput {
            input_ids,
            valid,
            pixel_values,
            image_grid_thw: grids,
        }
    }

    pub fn batch(&self) -> usize {
        self.input_ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    fn has_padding(&self) -> bool {
        self.valid.iter().flatten().any(|v| !v)
    }
}

/// What a forward pass gives the task heads.
pub struct ModelOutput {
    /// `(batch, seq, hidden)` after the final norm.
    pub hidden: Tensor,
    /// `[row][token]`: whether the token is an image token.
    pub image_mask: Vec<Vec<bool>>,
}

/// Cloning is cheap: the clone shares the weight tensors (they are reference-counted) and has
/// its own layer structs, so adapters attached to a clone are its own.
#[derive(Clone)]
pub struct Qwen3Vl {
    config: Qwen3VlConfig,
    vision: VisionTower,
    text: TextModel,
    /// `None` when tied to the token embeddings.
    lm_head: Option<Tensor>,
    /// The LM head in an inference format (`super::quantized`), when packed.
    lm_head_packed: Option<std::sync::Arc<super::quantized::PackedLinear>>,
}

impl Qwen3Vl {
    /// Builds the model from a checked [`VarBuilder`] (see [`super::weights::load`]).
    pub fn load(config: &Qwen3VlConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        let vision = VisionTower::load(vb.pp("model").pp("visual"), &config.vision)?;
        let text = TextModel::load(vb.pp("model").pp("language_model"), &config.text)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(vb.get(
                (config.text.vocab_size, config.text.hidden_size),
                "lm_head.weight",
            )?)
        };
        Ok(Qwen3Vl {
            config: config.clone(),
            vision,
            text,
            lm_head,
            lm_head_packed: None,
        })
    }

    /// Every linear layer of the model with its transformers module name
    /// (`model.visual.blocks.0.attn.qkv`, `model.language_model.layers.0.self_attn.q_proj`, ...),
    /// where adapters attach.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut super::ops::Linear)> {
        let mut out = self.vision.linears_mut("model.visual");
        out.extend(self.text.linears_mut("model.language_model"));
        out
    }

    /// The input embeddings `(batch, seq, hidden)` of `input`'s tokens in f32, outside the graph:
    /// what a token says before any layer has mixed the image into it.
    pub fn token_embeddings(&self, input: &ModelInput) -> anyhow::Result<Tensor> {
        let len = input.input_ids.first().map_or(0, Vec::len);
        let flat: Vec<u32> = input.input_ids.concat();
        let ids = Tensor::from_vec(flat, (input.input_ids.len(), len), self.device())?;
        Ok(self.text.embed(&ids)?.detach().to_dtype(DType::F32)?)
    }

    /// The LM head's weight `(vocab, hidden)` (the embeddings when tied).
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.text.embed_tokens)
    }

    pub fn config(&self) -> &Qwen3VlConfig {
        &self.config
    }

    /// Parameters of the base model (every tensor the config names).
    pub fn parameter_count(&self) -> usize {
        super::weights::expected_shapes(&self.config)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    pub fn device(&self) -> &Device {
        self.vision.device()
    }

    /// The dtype the model computes in (activations, norms, biases).
    pub fn dtype(&self) -> DType {
        self.text.dtype()
    }

    /// The dtype the large matrices are stored in (bf16 or f32; see
    /// [`super::weights::compute_dtype`]).
    pub fn storage_dtype(&self) -> DType {
        self.text.embed_tokens.dtype()
    }

    /// Turns activation recompute per decoder layer (and vision block) on for training (the adapters' gradients
    /// inside the layers then go to `sink`; see [`super::grad::checkpoint`]) or off.
    pub fn set_recompute(&mut self, sink: Option<std::sync::Arc<super::grad::GradSink>>) {
        self.vision.set_recompute(sink.clone());
        self.text.set_recompute(sink);
    }

    /// Logits over the vocabulary for hidden states `(..., hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match &self.lm_head_packed {
            Some(head) => head.forward(hidden)?,
            None => {
                let head = super::grad::widened(self.lm_head(), hidden.dtype())?;
                super::ops::matmul_last(hidden, &head)?
            }
        })
    }

    /// Computes logits with `head`; an untied head's own weight is dropped (a placeholder of
    /// its shape stays).
    pub fn set_packed_lm_head(
        &mut self,
        head: std::sync::Arc<super::quantized::PackedLinear>,
        device: &Device,
    ) -> anyhow::Result<()> {
        if let Some(w) = &mut self.lm_head {
            *w = super::quantized::placeholder(w.dims(), device)?;
        }
        self.lm_head_packed = Some(head);
        Ok(())
    }

    /// A full forward pass without a cache.
    pub fn forward(&self, input: &ModelInput, exec: Exec) -> anyhow::Result<ModelOutput> {
        self.run(input, None, exec)
    }

    /// Starts generation: empties `cache`, runs the prompt, and returns its hidden states.
    pub fn prefill(
        &self,
        input: &ModelInput,
        cache: &mut KvCache,
        exec: Exec,
    ) -> anyhow::Result<ModelOutput> {
        cache.reset();
        self.run(input, Some(cache), exec)
    }

    /// One new token per row after [`Self::prefill`]; hidden states `(batch, 1, hidden)`.
    pub fn step(&self, tokens: &[u32], cache: &mut KvCache, exec: Exec) -> anyhow::Result<Tensor> {
        let batch = tokens.len();
        ensure!(
            batch == cache.next_position.len() && !cache.is_empty(),
            "step() needs a prefilled cache of {batch} rows"
        );
        let past = cache.len();
        let dev = self.device();
        let ids = Tensor::from_vec(tokens.to_vec(), (batch, 1), dev)?;
        let embeds = self.text.embed(&ids)?;
        let pos: [Vec<Vec<i64>>; 3] =
            std::array::from_fn(|_| cache.next_position.iter().map(|&p| vec![p]).collect());
        let (cos, sin) = self.text_rotary(&pos)?;
        if let Some(padding) = &cache.padding {
            cache.padding = Some(Tensor::cat(
                &[padding, &Tensor::ones((batch, 1), DType::U8, dev)?],
                1,
            )?);
        }
        let mask = text::attention_mask(cache.padding.as_ref(), batch, past, 1, dev)?;
        let hidden =
            self.text
                .forward(&embeds, &cos, &sin, mask.as_ref(), &[], Some(cache), exec)?;
        for p in &mut cache.next_position {
            *p += 1;
        }
        Ok(hidden)
    }

    fn text_rotary(&self, positions: &[Vec<Vec<i64>>; 3]) -> anyhow::Result<(Tensor, Tensor)> {
        let t = &self.config.text;
        let (cos, sin) = positions::text_rotary(
            positions,
            t.mrope_section,
            t.rope_theta,
            t.head_dim,
            self.device(),
        )?;
        Ok((cos.to_dtype(self.dtype())?, sin.to_dtype(self.dtype())?))
    }

    /// The 3-D positions of a batch.
    pub fn positions(&self, input: &ModelInput) -> anyhow::Result<MropePositions> {
        positions::mrope_positions(
            &input.input_ids,
            &input.valid,
            self.config.image_token_id,
            &input.image_grid_thw,
            self.config.vision.spatial_merge_size,
        )
    }

    fn run(
        &self,
        input: &ModelInput,
        cache: Option<&mut KvCache>,
        exec: Exec,
    ) -> anyhow::Result<ModelOutput> {
        let (batch, len) = (input.batch(), input.seq_len());
        ensure!(batch > 0 && len > 0, "empty input");
        ensure!(
            input.valid.len() == batch && input.valid.iter().all(|v| v.len() == len),
            "the validity mask does not match the input ids"
        );
        let t = &self.config.text;
        if let Some(&bad) = input
            .input_ids
            .iter()
            .flatten()
            .find(|&&id| id as usize >= t.vocab_size)
        {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                t.vocab_size
            );
        }
        let positions = self.positions(input)?;
        let longest = positions.next.iter().copied().max().unwrap_or(0) as usize;
        if longest > t.max_position_embeddings {
            bail!(
                "the prompt needs {longest} positions, the model's context is {}",
                t.max_position_embeddings
            );
        }
        let dev = self.device();
        let flat: Vec<u32> = input.input_ids.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (batch, len), dev)?;
        let mut embeds = self.text.embed(&ids)?;

        let image_mask: Vec<Vec<bool>> = input
            .input_ids
            .iter()
            .zip(&input.valid)
            .map(|(row, valid)| {
                row.iter()
                    .zip(valid)
                    .map(|(&id, &v)| v && id == self.config.image_token_id)
                    .collect()
            })
            .collect();
        let image_tokens: usize = image_mask.iter().flatten().filter(|&&m| m).count();
        let mut deepstack = Vec::new();
        match &input.pixel_values {
            Some(pixels) => {
                // A tower without adapters keeps no graph: its fused kernels give the same values
                // faster, in training too.
                let vision_exec = if self.vision.trains() {
                    exec
                } else {
                    Exec::Fused
                };
                let vis = self
                    .vision
                    .forward(pixels, &input.image_grid_thw, vision_exec)
                    .context("vision tower")?;
                let features = vis.embeds.dim(0)?;
                ensure!(
                    features == image_tokens,
                    "the images give {features} image tokens, the prompts hold {image_tokens} <|image_pad|>"
                );
                // Row k + 1 of [0; features] goes to the k-th image position; row 0 (zeros)
                // everywhere else. A gather keeps it differentiable.
                let mut k = 0u32;
                let gather: Vec<u32> = image_mask
                    .iter()
                    .flatten()
                    .map(|&m| {
                        if m {
                            k += 1;
                            k
                        } else {
                            0
                        }
                    })
                    .collect();
                let gather = Tensor::from_vec(gather, batch * len, dev)?;
                let scatter = |features: &Tensor| -> anyhow::Result<Tensor> {
                    let zero = Tensor::zeros((1, t.hidden_size), features.dtype(), dev)?;
                    Ok(Tensor::cat(&[&zero, features], 0)?
                        .index_select(&gather, 0)?
                        .reshape((batch, len, t.hidden_size))?
                        .to_dtype(self.dtype())?)
                };
                let keep: Vec<f32> = image_mask
                    .iter()
                    .flatten()
                    .map(|&m| if m { 0.0 } else { 1.0 })
                    .collect();
                let keep = Tensor::from_vec(keep, (batch, len, 1), dev)?.to_dtype(self.dtype())?;
                embeds = (embeds.broadcast_mul(&keep)? + scatter(&vis.embeds)?)?;
                for features in &vis.deepstack {
                    deepstack.push(scatter(features)?);
                }
            }
            None => ensure!(
                image_tokens == 0,
                "the prompt holds {image_tokens} <|image_pad|> tokens but no image was given"
            ),
        }

        let (cos, sin) = self.text_rotary(&positions.ids)?;
        let valid = if input.has_padding() {
            let flat: Vec<u8> = input.valid.iter().flatten().map(|&v| v as u8).collect();
            Some(Tensor::from_vec(flat, (batch, len), dev)?)
        } else {
            None
        };
        let mask = text::attention_mask(valid.as_ref(), batch, 0, len, dev)?;
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            c.padding = valid.clone();
            c.next_position = positions.next.clone();
        }
        let hidden =
            self.text
                .forward(&embeds, &cos, &sin, mask.as_ref(), &deepstack, cache, exec)?;
        Ok(ModelOutput { hidden, image_mask })
    }
}
