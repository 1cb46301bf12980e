//! Backward passes that cost only what training needs (DESIGN 8).
//!
//! candle's own backward keeps a gradient for both operands of every product, so each frozen
//! base weight would get a full-size gradient that nothing reads, and every op stays in the graph
//! until `backward` ends. Three pieces avoid that:
//! - [`frozen_matmul`]: `x W^T` whose backward gives `x` its gradient and `W` none;
//! - [`checkpoint`]: a block whose activations are dropped after the forward pass and computed
//!   again, one block at a time, during backward (only the block's input is kept);
//! - [`with_backward`], which both are made of: a value computed outside the graph, joined to the
//!   graph through one argument with a backward given as a closure.
//!
//! They are written with tensor operations only, so they run on every device candle has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, TensorId,
    Var,
};

type Backward = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// The custom op behind [`with_backward`]: its forward hands out a value computed beforehand
/// (taken once, so the op holds no copy of it afterwards), its backward calls the closure.
struct Joined {
    value: Mutex<Option<Tensor>>,
    backward: Box<Backward>,
}

impl Joined {
    fn take(&self) -> Result<Tensor> {
        self.value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("joined value taken twice".into()))
    }
}

impl CustomOp1 for Joined {
    fn name(&self) -> &'static str {
        "joined"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let value = self.take()?.contiguous()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, value.shape().clone())),
            _ => candle_core::bail!("joined value on another device than its argument"),
        }
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let value = self.take()?.contiguous()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, value.shape().clone())),
            _ => candle_core::bail!("joined value on another device than its argument"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.backward)(arg, grad)?))
    }
}

/// `value` (computed from `arg` outside the graph) as a node of `arg`'s graph whose backward is
/// `backward(arg, grad of value) -> grad of arg`. Where `arg` is not in a graph, `value` itself.
pub fn with_backward(
    arg: &Tensor,
    value: Tensor,
    backward: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !arg.track_op() {
        return Ok(value);
    }
    // A contiguous copy is made of a non-contiguous value in the forward; shapes are checked
    // here so a wrong closure fails where it is built.
    arg.apply_op1(Joined {
        value: Mutex::new(Some(value.detach())),
        backward: Box::new(backward),
    })
}

/// `w` in `dtype`: a no-op when it already is, else a copy made for this product and dropped
/// after it (base weights stored in bf16 and computed in f32 on the CPU).
pub fn widened(w: &Tensor, dtype: DType) -> Result<Tensor> {
    if w.dtype() == dtype {
        Ok(w.clone())
    } else {
        w.to_dtype(dtype)
    }
}

/// `x W^T` for `x` of any rank, `w` `(out, in)` frozen: the backward gives `x` its gradient
/// (`grad W`) and computes nothing for `w`. `w` may be stored in another dtype than `x` (it is
/// widened for the product).
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = super::ops::matmul_last(&x.detach(), &widened(w, x.dtype())?)?;
    let w = w.clone();
    with_backward(x, y, move |x, grad| {
        let g = matmul_first(grad, &widened(&w, grad.dtype())?)?;
        g.reshape(x.shape())
    })
}

/// `x W` for `x` of any rank (`x`'s last dimension against `w`'s first).
fn matmul_first(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let y = x.reshape((rows, inner))?.matmul(w)?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dim(1)?;
    y.reshape(out)
}

/// Gradients of trainable tensors that [`checkpoint`]ed blocks computed during backward (they
/// do not reach the outer graph's gradient store), by tensor id.
#[derive(Default)]
pub struct GradSink {
    grads: Mutex<HashMap<TensorId, Tensor>>,
}

impl GradSink {
    fn add(&self, id: TensorId, g: Tensor) -> Result<()> {
        let mut grads = self.grads.lock().unwrap_or_else(|e| e.into_inner());
        let sum = match grads.remove(&id) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        grads.insert(id, sum);
        Ok(())
    }

    /// Takes the gradient of `t` out of the sink.
    pub fn take(&self, t: &Tensor) -> Option<Tensor> {
        self.grads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t.id())
    }

    /// Empties the sink (before a new forward pass).
    pub fn clear(&self) {
        self.grads.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A block function for [`checkpoint`].
pub type Block = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// `block(x)` with activation recompute: the forward pass runs the block outside the graph and
/// keeps only `x`; the backward runs it again on `x` (one block at a time) and backpropagates
/// through that copy. `params` are the trainable tensors inside the block; their gradients go to
/// `sink`. The block must be deterministic (dropout masks keyed by site, not by call order).
pub fn checkpoint(
    x: &Tensor,
    block: Block,
    params: Vec<Tensor>,
    sink: Arc<GradSink>,
) -> Result<Tensor> {
    if !x.track_op() && params.is_empty() {
        return block(x);
    }
    let y = block(&x.detach())?.detach();
    if !x.track_op() {
        // Nothing upstream trains, but the block's own parameters do: join it to a tracked copy
        // of the input so backward reaches it.
        let tracked = Var::from_tensor(x)?;
        return checkpoint_joined(tracked.as_tensor(), y, block, params, sink);
    }
    checkpoint_joined(x, y, block, params, sink)
}

fn checkpoint_joined(
    x: &Tensor,
    y: Tensor,
    block: Block,
    params: Vec<Tensor>,
    sink: Arc<GradSink>,
) -> Result<Tensor> {
    with_backward(x, y, move |x, grad| {
        let input = Var::from_tensor(&x.detach())?;
        let y = block(input.as_tensor())?;
        let grads = (y * grad.detach())?.backward()?;
        for p in &params {
            if let Some(g) = grads.get(p) {
                sink.add(p.id(), g.clone())?;
            }
        }
        match grads.get(input.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => x.zeros_like(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
    }

    /// The frozen product gives the input the gradient a plain product gives it, and the weight
    /// no gradient at all (a plain product stores one for it).
    #[test]
    fn frozen_matmul_has_the_input_gradient_only() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 5), &dev).unwrap();
        let plain = super::super::ops::matmul_last(x.as_tensor(), &w).unwrap();
        let frozen = frozen_matmul(x.as_tensor(), &w).unwrap();
        assert!(max_diff(&plain, &frozen) < 1e-6);
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let g_plain = (plain * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_frozen = (frozen * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // candle's product stores a gradient of the weight's size (under its transpose's id);
        // the frozen one stores none of that size.
        let weight_sized = |g: &candle_core::backprop::GradStore| {
            g.get_ids()
                .filter_map(|id| g.get_id(*id))
                .any(|t| t.elem_count() == w.elem_count())
        };
        assert!(weight_sized(&g_plain));
        assert!(!weight_sized(&g_frozen));
        let (a, b) = (
            g_plain.get(x.as_tensor()).unwrap(),
            g_frozen.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(a, b) < 1e-5);
        // A weight stored in bf16 is widened for the product.
        let w16 = w.to_dtype(DType::BF16).unwrap();
        let y16 = frozen_matmul(x.as_tensor(), &w16).unwrap();
        assert_eq!(y16.dtype(), DType::F32);
        let want =
            super::super::ops::matmul_last(x.as_tensor(), &w16.to_dtype(DType::F32).unwrap())
                .unwrap();
        assert!(max_diff(&y16, &want) < 1e-6);
    }

    /// A checkpointed block gives its input and its parameters the gradients the block gives
    /// without recompute.
    #[test]
    fn checkpoint_gives_the_same_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let a = Var::randn(0f32, 1.0, (4, 4), &dev).unwrap();
        let at = a.as_tensor().clone();
        let block: Block = Arc::new(move |x: &Tensor| x.matmul(&at)?.tanh()?.sqr());
        let direct = block(x.as_tensor()).unwrap();
        let g_direct = direct.sum_all().unwrap().backward().unwrap();
        let sink = Arc::new(GradSink::default());
        let y = checkpoint(
            x.as_tensor(),
            block,
            vec![a.as_tensor().clone()],
            sink.clone(),
        )
        .unwrap();
        assert!(max_diff(&y, &direct) < 1e-6);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(
            g.get(a.as_tensor()).is_none(),
            "the parameter's gradient goes to the sink"
        );
        let ga = sink.take(a.as_tensor()).unwrap();
        assert!(max_diff(&ga, g_direct.get(a.as_tensor()).unwrap()) < 1e-5);
        let gx = g.get(x.as_tensor()).unwrap();
        assert!(max_diff(gx, g_direct.get(x.as_tensor()).unwrap()) < 1e-5);
    }
}
