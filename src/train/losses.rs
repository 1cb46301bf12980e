//! The training losses, each written so that its gradient is the one intended.
//!
//! - ROI: SmoothL1 plus generalised IoU on the rows that have a box (and are not negatives),
//!   weighted as DETR weights L1 and GIoU (5 and 2, the L1 summed over the coordinates). With
//!   the SmoothL1 averaged over the coordinates and weighted like the GIoU, the GIoU term
//!   dominates, and while the head cannot yet tell where the lesion is its best answer is the
//!   whole image (its GIoU is the target's area, better than any fixed smaller box): the
//!   sigmoids saturate there and the head stops learning (measured: BENCHMARKS.md, learning
//!   proof);
//! - match: sigmoid focal loss, with the samples that are missed diagnoses (a true pair scored
//!   below 0.5) weighted up (the weight is a constant factor on a differentiable loss);
//! - LM: cross-entropy on the chosen target tokens only, computed in chunks of rows so the
//!   vocabulary-wide logits of a whole batch never exist at once, in training as in evaluation
//!   (the backward computes each chunk's logits again).

use candle_core::{DType, Device, Result, Tensor, D};

/// `log(1 + exp(x))` without overflow.
fn softplus(x: &Tensor) -> Result<Tensor> {
    // max(x, 0) + log(1 + exp(-|x|))
    x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// Generalised IoU of boxes `(n, 4)` (`x1, y1, x2, y2`), `(n)`.
pub fn giou(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let c = |t: &Tensor, i: usize| t.narrow(1, i, 1);
    let (px1, py1, px2, py2) = (c(pred, 0)?, c(pred, 1)?, c(pred, 2)?, c(pred, 3)?);
    let (tx1, ty1, tx2, ty2) = (c(target, 0)?, c(target, 1)?, c(target, 2)?, c(target, 3)?);
    let area_p = ((&px2 - &px1)? * (&py2 - &py1)?)?;
    let area_t = ((&tx2 - &tx1)? * (&ty2 - &ty1)?)?;
    let iw = (px2.minimum(&tx2)? - px1.maximum(&tx1)?)?.relu()?;
    let ih = (py2.minimum(&ty2)? - py1.maximum(&ty1)?)?.relu()?;
    let inter = (iw * ih)?;
    let union = ((&area_p + &area_t)? - &inter)?;
    let iou = (&inter / (&union + 1e-7)?)?;
    let hull = ((px2.maximum(&tx2)? - px1.minimum(&tx1)?)?
        * (py2.maximum(&ty2)? - py1.minimum(&ty1)?)?)?;
    let giou = (iou - ((&hull - &union)? / (&hull + 1e-7)?)?)?;
    giou.squeeze(1)
}

/// How the ROI loss is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiLossConfig {
    /// SmoothL1's threshold.
    pub beta: f64,
    /// Weight of the SmoothL1 summed over the four coordinates.
    pub l1_weight: f64,
    /// Weight of `1 - GIoU`.
    pub giou_weight: f64,
    /// Weight of the focus loss ([`focus_loss`]) within the ROI loss.
    pub focus_weight: f64,
}

impl Default for RoiLossConfig {
    fn default() -> Self {
        RoiLossConfig {
            beta: 0.1,
            l1_weight: 5.0,
            giou_weight: 2.0,
            focus_weight: 1.0,
        }
    }
}

/// SmoothL1 with threshold `beta` (PyTorch's definition), summed over the coordinates, `(n)`.
fn smooth_l1(pred: &Tensor, target: &Tensor, beta: f64) -> Result<Tensor> {
    let d = (pred - target)?.abs()?;
    // 0.5 d^2 / beta below beta, d - 0.5 beta above.
    let small = d.lt(beta)?.to_dtype(d.dtype())?;
    let quad = ((d.sqr()? * 0.5)? / beta)?;
    let lin = (&d - 0.5 * beta)?;
    let per = ((&small * quad)? + ((1.0 - &small)? * lin)?)?;
    per.sum(1)
}

/// ROI loss: `l1_weight * SmoothL1 + giou_weight * (1 - GIoU)` summed over the rows with
/// `weight` 1 and divided by `rows`,
/// the number of such rows in the whole batch (a replica's part of a batch divides by the whole's
/// count, so the parts add up); 0 when no row has a box. `weight` `(n)` is 0/1 (no box, or a
/// negative pair).
pub fn roi_loss(
    pred: &Tensor,
    target: &Tensor,
    weight: &Tensor,
    config: RoiLossConfig,
    rows: f64,
) -> Result<Tensor> {
    let l1 = (smooth_l1(pred, target, config.beta)? * config.l1_weight)?;
    let per = (l1 + ((1.0 - giou(pred, target)?)? * config.giou_weight)?)?;
    if rows < 0.5 {
        return (per * 0.0)?.sum_all();
    }
    (per * weight)?.sum_all()? / rows
}

/// Focus loss: the cross-entropy between the ROI pooling's weights (`log_weights` `(n, seq)`)
/// and the image tokens whose centres (`coords` `(n, seq, 2)`, image units) lie inside the row's
/// box `target` `(n, 4)` (evenly; the token nearest the box's centre when none does), summed over
/// the rows with `weight` 1 and divided by `rows` as [`roi_loss`] is. `image_mask` `(n, seq)` is
/// 1 at image tokens.
///
/// Every image token is told whether it is part of the finding, which teaches the pooling where
/// to look far sooner than four box coordinates do; the box is read off the pooling
/// (`heads::RoiHead::locate_with_focus`). It assumes nothing about what the finding is.
pub fn focus_loss(
    log_weights: &Tensor,
    coords: &Tensor,
    image_mask: &Tensor,
    target: &Tensor,
    weight: &Tensor,
    rows: f64,
) -> Result<Tensor> {
    let targets = focus_targets(coords, image_mask, target)?;
    let per = (targets * log_weights)?.sum(1)?.neg()?;
    if rows < 0.5 {
        return (per * 0.0)?.sum_all();
    }
    (per * weight)?.sum_all()? / rows
}

/// The focus loss's target distribution over tokens `(n, seq)` (see [`focus_loss`]).
pub fn focus_targets(coords: &Tensor, image_mask: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (coords, image_mask, target) = (coords.detach(), image_mask.detach(), target.detach());
    let x = coords.narrow(2, 0, 1)?.squeeze(2)?;
    let y = coords.narrow(2, 1, 1)?.squeeze(2)?;
    let edge = |i: usize| target.narrow(1, i, 1);
    let dtype = x.dtype();
    let inside = (x.broadcast_ge(&edge(0)?)?.to_dtype(dtype)?
        * x.broadcast_le(&edge(2)?)?.to_dtype(dtype)?
        * y.broadcast_ge(&edge(1)?)?.to_dtype(dtype)?
        * y.broadcast_le(&edge(3)?)?.to_dtype(dtype)?
        * &image_mask)?;
    // The token nearest the box's centre, for boxes between token centres.
    let cx = ((edge(0)? + edge(2)?)? * 0.5)?;
    let cy = ((edge(1)? + edge(3)?)? * 0.5)?;
    let dist = (x.broadcast_sub(&cx)?.sqr()? + y.broadcast_sub(&cy)?.sqr()?)?;
    let dist = (dist + ((1.0 - &image_mask)? * 1e9)?)?;
    let nearest = dist.broadcast_eq(&dist.min_keepdim(1)?)?.to_dtype(dtype)?;
    let count = inside.sum_keepdim(1)?;
    let has = count.gt(0.5)?.to_dtype(dtype)?;
    let chosen = (inside.broadcast_mul(&has)? + nearest.broadcast_mul(&(1.0 - &has)?)?)?;
    chosen.broadcast_div(&chosen.sum_keepdim(1)?.maximum(1e-12)?)
}

/// Settings of the match loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FocalConfig {
    pub alpha: f64,
    pub gamma: f64,
    /// Factor on the loss of true pairs scored below 0.5 (missed diagnoses).
    pub missed_weight: f64,
}

impl Default for FocalConfig {
    fn default() -> Self {
        FocalConfig {
            alpha: 0.25,
            gamma: 2.0,
            missed_weight: 10.0,
        }
    }
}

/// Sigmoid focal loss of `logits` `(n)` against `labels` `(n)` (1 true pair, 0 negative),
/// summed and divided by `samples` (the whole batch's size); each true pair with probability
/// below 0.5 counts `missed_weight` times.
pub fn focal_loss(
    logits: &Tensor,
    labels: &Tensor,
    c: FocalConfig,
    samples: f64,
) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    // Binary cross-entropy with logits: softplus(x) - y x.
    let bce = (softplus(logits)? - (labels * logits)?)?;
    let p_t = ((labels * &p)? + ((1.0 - labels)? * (1.0 - &p)?)?)?;
    let alpha_t = ((labels * c.alpha)? + ((1.0 - labels)? * (1.0 - c.alpha))?)?;
    let modulating = (1.0 - p_t)?.powf(c.gamma)?;
    let loss = ((alpha_t * modulating)? * bce)?;
    // Which samples are missed diagnoses is decided on the detached prediction.
    let missed = (labels * p.detach().lt(0.5)?.to_dtype(p.dtype())?)?;
    let weight = ((missed * (c.missed_weight - 1.0))? + 1.0)?;
    (loss * weight)?.sum_all()? / samples.max(1.0)
}

/// Cross-entropy of the tokens at `targets` (`(row, position, token)`: the hidden state at
/// `position` predicts `token`), summed and divided by `count` (the whole batch's number of
/// targets). `hidden` `(batch, seq, h)`, `head` `(vocab, h)` frozen (it may be stored in bf16).
///
/// The vocabulary-wide logits exist for `chunk` rows at a time, in the forward pass and in the
/// backward pass alike: the forward keeps none of them, the backward computes each chunk's
/// again and turns it into that chunk's gradient at once (`softmax - onehot` times the head).
/// So training memory is bounded by one chunk whatever the number of targets, and the head
/// gets no gradient.
pub fn lm_loss(
    hidden: &Tensor,
    head: &Tensor,
    targets: &[(usize, usize, u32)],
    chunk: usize,
    count: f64,
) -> Result<Tensor> {
    let device: &Device = hidden.device();
    if targets.is_empty() {
        return (hidden.sum_all()? * 0.0)?.to_dtype(DType::F32);
    }
    let (_, seq, h) = hidden.dims3()?;
    let rows: Vec<u32> = targets
        .iter()
        .map(|&(b, s, _)| (b * seq + s) as u32)
        .collect();
    let rows = Tensor::from_vec(rows, targets.len(), device)?;
    let x = hidden
        .reshape(((), h))?
        .index_select(&rows, 0)?
        .to_dtype(DType::F32)?;
    let tokens: Vec<u32> = targets.iter().map(|&(_, _, t)| t).collect();
    let chunk = chunk.max(1);
    let nll = summed_nll(&x.detach(), head, &tokens, chunk)?;
    let head = head.clone();
    let total = crate::model::grad::with_backward(&x, nll, move |x, grad| {
        // Outside the graph: a product with a tracked `x` would keep each widened block of the
        // head alive until the chunk's logits are dropped (1.2 GB on the 2B, heaptrack).
        nll_gradient(&x.detach(), &head, &tokens, chunk)?.broadcast_mul(&grad.to_dtype(DType::F32)?)
    })?;
    total / count.max(1.0)
}

/// Rows of the head widened at once when it is stored narrower than f32 (64 MiB at hidden 2048).
const HEAD_BLOCK: usize = 8192;

/// Logits `(rows, vocab)` in f32 of `x` `(rows, h)` against `head` `(vocab, h)`.
fn chunk_logits(x: &Tensor, head: &Tensor) -> Result<Tensor> {
    if head.dtype() == x.dtype() {
        return x.matmul(&head.t()?);
    }
    let vocab = head.dim(0)?;
    let blocks = (0..vocab)
        .step_by(HEAD_BLOCK)
        .map(|start| {
            let w = head.narrow(0, start, HEAD_BLOCK.min(vocab - start))?;
            x.matmul(&w.to_dtype(x.dtype())?.t()?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&blocks, 1)
}

/// `p` `(rows, vocab)` times `head` `(vocab, h)`, the head widened a block at a time.
fn times_head(p: &Tensor, head: &Tensor) -> Result<Tensor> {
    if head.dtype() == p.dtype() {
        return p.matmul(head);
    }
    let vocab = head.dim(0)?;
    let mut sum: Option<Tensor> = None;
    for start in (0..vocab).step_by(HEAD_BLOCK) {
        let len = HEAD_BLOCK.min(vocab - start);
        let part = p
            .narrow(1, start, len)?
            .contiguous()?
            .matmul(&head.narrow(0, start, len)?.to_dtype(p.dtype())?)?;
        sum = Some(match sum {
            None => part,
            Some(s) => (s + part)?,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("empty vocabulary".into()))
}

/// `sum_i -log softmax(x_i W^T)[token_i]`, a scalar, outside any graph.
fn summed_nll(x: &Tensor, head: &Tensor, tokens: &[u32], chunk: usize) -> Result<Tensor> {
    let mut total = 0f64;
    for (i, part) in tokens.chunks(chunk).enumerate() {
        let logits = chunk_logits(&x.narrow(0, i * chunk, part.len())?, head)?;
        let ids = Tensor::from_vec(part.to_vec(), (part.len(), 1), x.device())?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked: f32 = log_probs.gather(&ids, 1)?.sum_all()?.to_scalar()?;
        total -= f64::from(picked);
    }
    Tensor::new(total as f32, x.device())
}

/// The gradient of [`summed_nll`] with respect to `x`: `(softmax - onehot) W` per chunk.
fn nll_gradient(x: &Tensor, head: &Tensor, tokens: &[u32], chunk: usize) -> Result<Tensor> {
    let mut parts = Vec::new();
    for (i, part) in tokens.chunks(chunk).enumerate() {
        let logits = chunk_logits(&x.narrow(0, i * chunk, part.len())?, head)?;
        let p = candle_nn::ops::softmax_last_dim(&logits)?;
        drop(logits);
        let ids = Tensor::from_vec(part.to_vec(), (part.len(), 1), x.device())?;
        let minus_one = Tensor::full(-1f32, (part.len(), 1), x.device())?;
        let p = p.scatter_add(&ids, &minus_one, 1)?;
        parts.push(times_head(&p, head)?);
    }
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The focus targets spread evenly over the image tokens inside the box; a box between token
    /// centres gets the nearest token; text tokens never get any.
    #[test]
    fn focus_targets_are_the_tokens_in_the_box() {
        let dev = Device::Cpu;
        // One text token, then a 2x2 grid of image tokens.
        let coords = Tensor::new(
            &[[
                [0f32, 0.0],
                [0.25, 0.25],
                [0.75, 0.25],
                [0.25, 0.75],
                [0.75, 0.75],
            ]; 2],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(&[[0f32, 1.0, 1.0, 1.0, 1.0]; 2], &dev).unwrap();
        let boxes = Tensor::new(&[[0.0f32, 0.0, 0.5, 1.0], [0.6, 0.6, 0.7, 0.7]], &dev).unwrap();
        let t = focus_targets(&coords, &mask, &boxes)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(t[0], [0.0, 0.5, 0.0, 0.5, 0.0]);
        assert_eq!(t[1], [0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn giou_is_one_for_equal_boxes_and_negative_for_far_apart_ones() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0.1f32, 0.1, 0.3, 0.3], [0.0, 0.0, 0.1, 0.1]], &dev).unwrap();
        let b = Tensor::new(&[[0.1f32, 0.1, 0.3, 0.3], [0.8, 0.8, 0.9, 0.9]], &dev).unwrap();
        let g = giou(&a, &b).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 1.0).abs() < 1e-5);
        // Hull 0.81, union 0.02: IoU 0 minus 0.79 / 0.81.
        assert!((g[1] + 0.79 / 0.81).abs() < 1e-4, "{}", g[1]);
    }

    #[test]
    fn rows_without_a_box_carry_no_roi_loss() {
        let dev = Device::Cpu;
        let pred = Tensor::new(&[[0.1f32, 0.1, 0.3, 0.3], [0.0, 0.0, 0.5, 0.5]], &dev).unwrap();
        let target = Tensor::new(&[[0.1f32, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]], &dev).unwrap();
        let only_first = Tensor::new(&[1f32, 0.0], &dev).unwrap();
        let l = roi_loss(&pred, &target, &only_first, RoiLossConfig::default(), 1.0).unwrap();
        assert!(l.to_scalar::<f32>().unwrap().abs() < 1e-5);
        let none = Tensor::new(&[0f32, 0.0], &dev).unwrap();
        assert_eq!(
            roi_loss(&pred, &target, &none, RoiLossConfig::default(), 0.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }

    /// The chunked loss gives the values and input gradients of a plain cross-entropy over the
    /// whole vocabulary, with the head in f32 or stored in bf16, and the head gets no gradient.
    #[test]
    fn chunked_lm_loss_matches_plain_cross_entropy() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let hidden = Var::randn(0f32, 1.0, (2, 5, 8), &dev).unwrap();
        let head = Tensor::randn(0f32, 1.0, (50, 8), &dev).unwrap();
        let targets = [(0, 1, 3u32), (0, 2, 49), (1, 0, 0), (1, 3, 17), (1, 4, 3)];
        let plain = |head: &Tensor| {
            let flat = hidden.as_tensor().reshape((10, 8)).unwrap();
            let rows: Vec<u32> = targets
                .iter()
                .map(|&(b, s, _)| (b * 5 + s) as u32)
                .collect();
            let rows = Tensor::new(rows.as_slice(), &dev).unwrap();
            let ids: Vec<u32> = targets.iter().map(|t| t.2).collect();
            let ids = Tensor::new(ids.as_slice(), &dev)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let logits = flat
                .index_select(&rows, 0)
                .unwrap()
                .matmul(&head.t().unwrap())
                .unwrap();
            let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            (lp.gather(&ids, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .neg()
                .unwrap()
                / 4.0)
                .unwrap()
        };
        for (head, tol) in [
            (head.clone(), 1e-5f32),
            (head.to_dtype(DType::BF16).unwrap(), 1e-5),
        ] {
            let wide = head.to_dtype(DType::F32).unwrap();
            let want = plain(&wide);
            let want_grad = want.backward().unwrap();
            for chunk in [1, 2, 5, 64] {
                let got = lm_loss(hidden.as_tensor(), &head, &targets, chunk, 4.0).unwrap();
                let d = (got.to_scalar::<f32>().unwrap() - want.to_scalar::<f32>().unwrap()).abs();
                assert!(d < tol, "chunk {chunk}: loss off by {d}");
                let g = got.backward().unwrap();
                assert!(g.get(&head).is_none(), "the head is frozen");
                let diff = (g.get(hidden.as_tensor()).unwrap()
                    - want_grad.get(hidden.as_tensor()).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
                assert!(diff < tol, "chunk {chunk}: gradient off by {diff}");
            }
        }
    }
}
