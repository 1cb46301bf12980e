//! Qwen3-VL's text model: decoder layers with QK-norm, grouped-query attention and MRoPE, a
//! key/value cache for generation, and the DeepStack additions at image positions.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::TextConfig;
use super::grad::{self, GradSink};
use super::ops::{self, Exec, Linear};

#[derive(Clone)]
struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Tensor,
    k_norm: Tensor,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    input_norm: Tensor,
    post_attention_norm: Tensor,
}

impl Layer {
    /// The trainable tensors inside the layer (its adapters).
    fn adapter_tensors(&self) -> Vec<Tensor> {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
        .iter()
        .filter_map(|l| l.lora.as_ref())
        .flat_map(|l| [l.a.clone(), l.b.clone()])
        .collect()
    }
}

/// Keys and values of the tokens seen so far, per layer. [`KvCache::reset`] empties it, so a
/// model serves any number of prompts.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `(batch, cached tokens)`: 1 for real tokens, 0 for padding; `None` when nothing is padded.
    pub(crate) padding: Option<Tensor>,
    /// Next position of each row (all three MRoPE axes advance together after the prompt).
    pub(crate) next_position: Vec<i64>,
}

impl KvCache {
    pub fn new() -> Self {
        KvCache::default()
    }

    pub fn reset(&mut self) {
        *self = KvCache::default();
    }

    /// Number of tokens cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` cached tokens. For tokens cached after the prompt (their positions
    /// advance by one each), so `next_position` moves back by as many as are dropped.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        let dropped = self.len().saturating_sub(len);
        if dropped == 0 {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, len)?;
            *v = v.narrow(2, 0, len)?;
        }
        if let Some(p) = &mut self.padding {
            *p = p.narrow(1, 0, len)?;
        }
        for p in &mut self.next_position {
            *p -= dropped as i64;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct TextModel {
    config: TextConfig,
    pub(crate) embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// Activation recompute in training: where the layers' adapter gradients go (see
    /// [`grad::checkpoint`]); `None` keeps every layer's activations until backward.
    recompute: Option<Arc<GradSink>>,
}

impl TextModel {
    pub fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let h = c.hidden_size;
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let bias = c.attention_bias;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("layers").pp(i);
                let a = l.pp("self_attn");
                let m = l.pp("mlp");
                Ok(Layer {
                    q_proj: Linear::load(&a.pp("q_proj"), q, h, bias)?,
                    k_proj: Linear::load(&a.pp("k_proj"), kv, h, bias)?,
                    v_proj: Linear::load(&a.pp("v_proj"), kv, h, bias)?,
                    o_proj: Linear::load(&a.pp("o_proj"), h, q, bias)?,
                    q_norm: a.get(c.head_dim, "q_norm.weight")?,
                    k_norm: a.get(c.head_dim, "k_norm.weight")?,
                    gate_proj: Linear::load(&m.pp("gate_proj"), c.intermediate_size, h, false)?,
                    up_proj: Linear::load(&m.pp("up_proj"), c.intermediate_size, h, false)?,
                    down_proj: Linear::load(&m.pp("down_proj"), h, c.intermediate_size, false)?,
                    input_norm: l.get(h, "input_layernorm.weight")?,
                    post_attention_norm: l.get(h, "post_attention_layernorm.weight")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TextModel {
            config: c.clone(),
            embed_tokens: vb.get((c.vocab_size, h), "embed_tokens.weight")?,
            layers,
            norm: vb.get(h, "norm.weight")?,
            recompute: None,
        })
    }

    /// Every linear layer with its module name under `prefix` (as transformers names it).
    pub fn linears_mut(&mut self, prefix: &str) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("{prefix}.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut l.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut l.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut l.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut l.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut l.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut l.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut l.down_proj));
        }
        out
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Turns activation recompute in training on (gradients of the layers' adapters then go to
    /// `sink`) or off.
    pub fn set_recompute(&mut self, sink: Option<Arc<GradSink>>) {
        self.recompute = sink;
    }

    /// The dtype the model computes in (the embeddings may be stored in a narrower one).
    pub fn dtype(&self) -> DType {
        self.norm.dtype()
    }

    /// Embeddings of `ids` (`(batch, seq)` u32), in the compute dtype.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(self.dtype())?
            .reshape((b, s, self.config.hidden_size))
    }

    /// Runs the layers over `embeds` (`(batch, seq, hidden)`) and returns the final-norm hidden
    /// states.
    ///
    /// `cos`/`sin`: `(batch, seq, head_dim / 2)`; `mask`: additive `(batch, 1, seq, kv_len)` or
    /// `None` when every query may see every cached and new key; `deepstack[i]` is added after
    /// layer `i` (already scattered to `(batch, seq, hidden)`, zero at text positions).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        deepstack: &[Tensor],
        mut cache: Option<&mut KvCache>,
        exec: Exec,
    ) -> Result<Tensor> {
        let mut x = embeds.clone();
        if let Some(cache) = cache.as_deref_mut() {
            if cache.layers.len() != self.layers.len() {
                cache.layers = vec![None; self.layers.len()];
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = match (&self.recompute, exec, slot) {
                (Some(sink), Exec::Differentiable, None) => {
                    let (c, l) = (self.config.clone(), layer.clone());
                    let (cos, sin, mask) = (cos.clone(), sin.clone(), mask.cloned());
                    let block: grad::Block = Arc::new(move |x: &Tensor| {
                        layer_forward(&c, &l, x, &cos, &sin, mask.as_ref(), None, exec)
                    });
                    grad::checkpoint(&x, block, layer.adapter_tensors(), sink.clone())?
                }
                (_, _, slot) => layer_forward(&self.config, layer, &x, cos, sin, mask, slot, exec)?,
            };
            if let Some(add) = deepstack.get(i) {
                x = (x + add)?;
            }
        }
        ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps, exec)
    }
}

/// One decoder layer over `x` `(batch, seq, hidden)`, appending to `cache` when given.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    c: &TextConfig,
    l: &Layer,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    cache: Option<&mut Option<(Tensor, Tensor)>>,
    exec: Exec,
) -> Result<Tensor> {
    let eps = c.rms_norm_eps;
    let (b, s, _) = x.dims3()?;
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let h = ops::rms_norm(x, &l.input_norm, eps, exec)?;
    let q = l.q_proj.forward(&h)?.reshape((b, s, nh, hd))?;
    let k = l.k_proj.forward(&h)?.reshape((b, s, nkv, hd))?;
    let v = l.v_proj.forward(&h)?.reshape((b, s, nkv, hd))?;
    let q = ops::rms_norm(&q, &l.q_norm, eps, exec)?.transpose(1, 2)?;
    let k = ops::rms_norm(&k, &l.k_norm, eps, exec)?.transpose(1, 2)?;
    let v = v.transpose(1, 2)?.contiguous()?;
    let q = ops::rope(&q.contiguous()?, cos, sin, exec)?;
    let k = ops::rope(&k.contiguous()?, cos, sin, exec)?;
    let (k, v) = match cache {
        Some(slot) => {
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            (k, v)
        }
        None => (k, v),
    };
    let k = repeat_kv(&k, nh / nkv)?;
    let v = repeat_kv(&v, nh / nkv)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let att = ops::attention(&q, &k.contiguous()?, &v.contiguous()?, mask, scale, exec)?;
    let att = att.transpose(1, 2)?.reshape((b, s, nh * hd))?;
    let x = (x + l.o_proj.forward(&att)?)?;
    let h = ops::rms_norm(&x, &l.post_attention_norm, eps, exec)?;
    let gate = c.hidden_act.apply(&l.gate_proj.forward(&h)?)?;
    let mlp = l.down_proj.forward(&(gate * l.up_proj.forward(&h)?)?)?;
    x + mlp
}

/// `(batch, kv_heads, seq, d)` to `(batch, kv_heads * n, seq, d)`, each key/value head shared by
/// `n` consecutive query heads.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n, s, d))?
        .reshape((b, kv * n, s, d))
}

/// The additive attention mask for `new` queries after `past` cached tokens: causal, and
/// padding (`valid`, `(batch, past + new)` of 0/1) hidden. `None` when nothing needs hiding.
pub fn attention_mask(
    valid: Option<&Tensor>,
    batch: usize,
    past: usize,
    new: usize,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    let total = past + new;
    if new == 1 && valid.is_none() {
        return Ok(None);
    }
    // Large and finite: a row of padding that sees nothing still softmaxes to numbers, not NaN.
    let hidden = f32::MIN;
    let causal: Vec<f32> = (0..new)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { hidden } else { 0.0 }))
        .collect();
    let mut mask = Tensor::from_vec(causal, (1, 1, new, total), device)?;
    if let Some(valid) = valid {
        // 0 where valid, f32::MIN where padding; min() with the causal part cannot overflow.
        let pad = ((valid.to_dtype(DType::F32)? - 1.0)? * f64::from(f32::MAX))?
            .reshape((batch, 1, 1, total))?;
        mask = mask.broadcast_minimum(&pad)?;
    }
    Ok(Some(
        mask.broadcast_as((batch, 1, new, total))?.contiguous()?,
    ))
}
