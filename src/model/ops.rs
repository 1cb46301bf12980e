//! The few operations whose fused candle kernels have no backward pass, each in two forms.
//!
//! Training must use [`Exec::Differentiable`]: candle's fused `softmax_last_dim`, `rms_norm`,
//! `layer_norm` and `rope` drop gradients without a word. Inference uses [`Exec::Fused`], which
//! computes the same values faster.

use candle_core::{DType, Module, Result, Tensor, D};

/// Which form of the operations a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// Every op has a backward pass (training).
    Differentiable,
    /// Fused kernels where candle has them (inference).
    Fused,
}

/// RMS norm in f32, as transformers computes it, scaled by `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, exec: Exec) -> Result<Tensor> {
    match exec {
        Exec::Fused if x.dtype() == DType::F32 => {
            candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
        }
        _ => {
            let dtype = x.dtype();
            let x = x.to_dtype(DType::F32)?;
            let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = x.broadcast_mul(&(mean_sq + eps)?.sqrt()?.recip()?)?;
            normed.to_dtype(dtype)?.broadcast_mul(weight)
        }
    }
}

/// Layer norm over the last dimension, in f32.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    exec: Exec,
) -> Result<Tensor> {
    match exec {
        Exec::Fused if x.dtype() == DType::F32 => {
            candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)
        }
        _ => {
            let dtype = x.dtype();
            let x = x.to_dtype(DType::F32)?;
            let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
            normed
                .to_dtype(dtype)?
                .broadcast_mul(weight)?
                .broadcast_add(bias)
        }
    }
}

/// Softmax over the last dimension, computed in f32.
pub fn softmax_last(x: &Tensor, exec: Exec) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let y = match exec {
        Exec::Fused => candle_nn::ops::softmax_last_dim(&x.contiguous()?)?,
        Exec::Differentiable => candle_nn::ops::softmax(&x, D::Minus1)?,
    };
    y.to_dtype(dtype)
}

/// Rotary embedding in the "rotate half" layout: `x` is `(batch, heads, seq, head_dim)`, `cos`
/// and `sin` hold the `head_dim / 2` angles, `(seq, head_dim / 2)` or `(batch, seq, head_dim / 2)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, exec: Exec) -> Result<Tensor> {
    match exec {
        Exec::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin),
        Exec::Differentiable => {
            let full = |t: &Tensor| -> Result<Tensor> {
                let t = Tensor::cat(&[t, t], D::Minus1)?;
                // Broadcast over heads.
                match t.rank() {
                    2 => t.unsqueeze(0)?.unsqueeze(0),
                    _ => t.unsqueeze(1),
                }
            };
            let (cos, sin) = (full(cos)?, full(sin)?);
            let half = x.dim(D::Minus1)? / 2;
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
        }
    }
}

/// Scores of one attention chunk are kept under this many elements (256 MiB in f32), so a huge
/// image or a long prompt costs time, not all the memory.
const SCORE_BUDGET: usize = 64 << 20;

/// Scaled dot-product attention: `q` `(batch, heads, queries, d)`, `k`/`v` `(batch, heads, keys,
/// d)`, `mask` additive and broadcastable to `(batch, heads, queries, keys)`. Queries are taken in
/// chunks when the score matrix would exceed the budget.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    exec: Exec,
) -> Result<Tensor> {
    let (b, h, _, _) = q.dims4()?;
    let chunk = (SCORE_BUDGET / (b * h * k.dim(2)?).max(1)).max(1);
    attention_in_chunks(q, k, v, mask, scale, exec, chunk)
}

fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    exec: Exec,
    chunk: usize,
) -> Result<Tensor> {
    let nq = q.dim(2)?;
    let kt = k.t()?;
    let one = |start: usize, len: usize| -> Result<Tensor> {
        let q = if len == nq {
            q.clone()
        } else {
            q.narrow(2, start, len)?
        };
        let mut scores = (q.matmul(&kt)? * scale)?;
        if let Some(mask) = mask {
            let mask = if len == nq {
                mask.clone()
            } else {
                mask.narrow(2, start, len)?
            };
            scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
        }
        softmax_last(&scores, exec)?.matmul(v)
    };
    if nq <= chunk {
        return one(0, nq);
    }
    let parts = (0..nq)
        .step_by(chunk)
        .map(|start| one(start, chunk.min(nq - start)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 2)
}

/// A low-rank adapter on a linear layer: `scale * B (A dropout(x))`, with `A` `(r, in)` and `B`
/// `(out, r)` (PEFT's LoRA).
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
    pub dropout: f64,
    /// Dropout is applied only while this has a plan (training); counter-based, so runs repeat
    /// and replicas agree.
    pub masks: Option<std::sync::Arc<super::dropout::Dropout>>,
    /// This adapter's dropout site: its place among the model's adapters, so a block computed
    /// again for backward (activation recompute) draws the masks it drew the first time.
    pub site: u64,
}

impl Lora {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mask = match &self.masks {
            Some(masks) if self.dropout > 0.0 => masks.mask(self.dropout, self.site, x.dims())?,
            _ => None,
        };
        let x = match mask {
            Some(mask) => {
                let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
                (x * mask)?
            }
            None => x.clone(),
        };
        let a = self.a.to_dtype(x.dtype())?;
        let b = self.b.to_dtype(x.dtype())?;
        matmul_last(&matmul_last(&x, &a)?, &b)? * self.scale
    }
}

/// `x W^T` for `x` of any rank (the last dimension is contracted).
pub fn matmul_last(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match x.rank() {
        2 => x.matmul(&w.t()?),
        _ => {
            let dims = x.dims().to_vec();
            let (rows, inp): (usize, usize) = (
                dims[..dims.len() - 1].iter().product(),
                dims[dims.len() - 1],
            );
            let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
            let mut out = dims;
            *out.last_mut().unwrap() = w.dim(0)?;
            y.reshape(out)
        }
    }
}

/// A linear layer `x W^T + b` (weights as transformers stores them), optionally with a LoRA
/// adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    /// The weight in an inference format (`super::quantized`, set at load); `weight` is then only
    /// a placeholder of its shape.
    pub packed: Option<std::sync::Arc<super::quantized::PackedLinear>>,
}

impl Linear {
    pub fn load(vb: &candle_nn::VarBuilder, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out, inp), "weight")?;
        let bias = if bias {
            Some(vb.get(out, "bias")?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
            packed: None,
        })
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }
}

impl Module for Linear {
    /// A frozen weight (a base weight, not a variable) in a graph (training) gets no gradient
    /// for its product (`grad::frozen_matmul`); a trainable one (the heads') does. A weight
    /// stored in another dtype than `x` is widened for the product (bf16 weights computed in f32
    /// on the CPU).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = if let Some(packed) = &self.packed {
            packed.forward(x)?
        } else if x.track_op() && !self.weight.track_op() {
            super::grad::frozen_matmul(x, &self.weight)?
        } else {
            matmul_last(x, &super::grad::widened(&self.weight, x.dtype())?)?
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&super::grad::widened(b, y.dtype())?)?;
        }
        match &self.lora {
            Some(lora) => y + lora.forward(x)?,
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Both forms give the same numbers.
    #[test]
    fn fused_and_differentiable_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 8, &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let pairs = [
            (
                rms_norm(&x, &w, 1e-6, Exec::Fused).unwrap(),
                rms_norm(&x, &w, 1e-6, Exec::Differentiable).unwrap(),
            ),
            (
                layer_norm(&x, &w, &b, 1e-6, Exec::Fused).unwrap(),
                layer_norm(&x, &w, &b, 1e-6, Exec::Differentiable).unwrap(),
            ),
            (
                softmax_last(&x, Exec::Fused).unwrap(),
                softmax_last(&x, Exec::Differentiable).unwrap(),
            ),
            (
                rope(&x, &cos, &sin, Exec::Fused).unwrap(),
                rope(&x, &cos, &sin, Exec::Differentiable).unwrap(),
            ),
        ];
        // Attention in chunks of 2 queries equals attention in one piece, mask included.
        let k = Tensor::randn(0f32, 1.0, (2, 3, 6, 8), &dev).unwrap();
        let mask = Tensor::randn(0f32, 1.0, (2, 1, 5, 6), &dev).unwrap();
        let whole = attention_in_chunks(&x, &k, &k, Some(&mask), 0.3, Exec::Fused, 100).unwrap();
        let parts = attention_in_chunks(&x, &k, &k, Some(&mask), 0.3, Exec::Fused, 2).unwrap();
        assert!(diff(&whole, &parts) < 1e-6);
        for (i, (a, b)) in pairs.iter().enumerate() {
            assert!(diff(a, b) < 1e-5, "op {i}: {}", diff(a, b));
        }
    }
}
