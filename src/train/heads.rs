//! The task heads that sit on Qwen3-VL's final hidden states.
//!
//! Each head pools the states it may look at with masked attention pooling (padding and, for the
//! ROI head, everything but the image tokens get exactly zero weight), then:
//! - the ROI head predicts a box in image-relative units, read off where its pooling looks
//!   (the locus below) and refined by its layers, clipped to the image; its pooling is taught
//!   which image tokens lie inside the box (`losses::focus_loss`);
//! - the match head scores the (image, text) pair with one logit.
//!
//! The ROI head also reads its pooling's *locus*: the mean and the spread of the image tokens'
//! grid coordinates under the pooling weights (a soft argmax, as in DSNT or CoordConv). A vision
//! transformer's final states carry little absolute position (in the tiny random model about 5%
//! of an image token's state; BENCHMARKS.md, learning proof), so a box regressed from pooled
//! content alone cannot say *where*; the locus can. The match head compares the text with what
//! the ROI head found and where, and with a text-conditioned attention over the image tokens
//! (see [`MatchHead`]); it assumes nothing about what the text talks about. The seed's heads have
//! neither: imported seed heads get zero weights there (`infer::heads`).
//!
//! The learned task weights `s_i` combine the losses as `0.5 * exp(-s_i) * L_i + 0.5 * s_i`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::model::dropout::{DropoutPlan, ROI_HEAD_SITE};
use crate::model::ops::Linear;

/// Sizes of the heads (the seed's: pooling 512, ROI 512 with dropout 0.1, match 256).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadsConfig {
    pub pool_hidden: usize,
    pub roi_hidden: usize,
    pub roi_dropout: f64,
    pub match_hidden: usize,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        HeadsConfig {
            pool_hidden: 512,
            roi_hidden: 512,
            roi_dropout: 0.1,
            match_hidden: 256,
        }
    }
}

/// A linear layer initialised as PyTorch's `nn.Linear` (uniform within `1 / sqrt(in)`).
fn linear(vb: &VarBuilder, out: usize, inp: usize) -> Result<Linear> {
    linear_with(vb, out, inp, true)
}

fn linear_with(vb: &VarBuilder, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let bound = 1.0 / (inp as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Ok(Linear {
        weight: vb.get_with_hints((out, inp), "weight", init)?,
        bias: if bias {
            Some(vb.get_with_hints(out, "bias", init)?)
        } else {
            None
        },
        lora: None,
        packed: None,
    })
}

/// `Linear(h, k) - Tanh - Linear(k, 1, no bias) - softmax` over the allowed positions.
///
/// The seed's second layer has a bias, but a softmax ignores a shift of all its scores: that
/// bias has no effect and a gradient that is zero up to rounding, which Adam would turn into
/// steps of full learning-rate size in a random direction. So it is left out.
pub struct AttentionPool {
    fc1: Linear,
    fc2: Linear,
}

impl AttentionPool {
    pub fn load(vb: VarBuilder, hidden: usize, inner: usize) -> Result<Self> {
        Ok(AttentionPool {
            fc1: linear(&vb.pp("fc1"), inner, hidden)?,
            fc2: linear_with(&vb.pp("fc2"), 1, inner, false)?,
        })
    }

    /// `states` `(batch, seq, hidden)`, `allowed` `(batch, seq)` of 0/1 in the states' dtype:
    /// the pooled `(batch, hidden)` and the weights `(batch, seq)`, zero where not allowed.
    pub fn forward(&self, states: &Tensor, allowed: &Tensor) -> Result<(Tensor, Tensor)> {
        let (pooled, weights, _) = self.forward_with_log(states, allowed)?;
        Ok((pooled, weights))
    }

    /// As [`AttentionPool::forward`], with the weights' logarithms `(batch, seq)` besides (finite:
    /// about -1e9 where not allowed), for a loss on where the pooling looks.
    pub fn forward_with_log(
        &self,
        states: &Tensor,
        allowed: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let per_row = allowed.sum(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(row) = per_row.iter().position(|&n| n < 0.5) {
            candle_core::bail!("attention pooling: row {row} has no position to pool over");
        }
        let scores = self
            .fc2
            .forward(&self.fc1.forward(states)?.tanh()?)?
            .squeeze(D::Minus1)?;
        // Masked softmax: shift by the largest allowed score, zero the rest after exp.
        let hidden = ((allowed - 1.0)? * 1e9)?;
        let shifted = (scores + &hidden)?;
        let max = shifted.max_keepdim(1)?.detach();
        let centred = shifted.broadcast_sub(&max)?;
        let exp = (centred.exp()? * allowed)?;
        let sum = exp.sum_keepdim(1)?;
        let weights = exp.broadcast_div(&sum)?;
        let log_weights = centred.broadcast_sub(&sum.log()?)?;
        let pooled = weights.unsqueeze(2)?.broadcast_mul(states)?.sum(1)?;
        Ok((pooled, weights, log_weights))
    }
}

/// Dropout with a counter-based mask (see `model::dropout`): the same for a sample on any
/// replica. No plan: no dropout (evaluation).
pub fn dropout(x: &Tensor, p: f64, plan: Option<&DropoutPlan>) -> Result<Tensor> {
    let Some(plan) = plan else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = plan.mask(p, ROI_HEAD_SITE, x.dims())?;
    let mask = Tensor::from_vec(keep, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// Where an image token sits: `(batch, seq, 2)` with the centre `(x, y)` of its merged patch in
/// image-relative units at image tokens and 0 elsewhere. `image_mask` rows flag the image tokens
/// (one image per row, in Qwen3-VL's merged raster order); `grids` is each row's `grid_thw` in
/// patches. The merge size follows from the token count, and must be a whole number.
pub fn image_token_coords(
    image_mask: &[Vec<bool>],
    grids: &[[u32; 3]],
    device: &candle_core::Device,
) -> Result<Tensor> {
    if image_mask.len() != grids.len() {
        candle_core::bail!("{} rows but {} image grids", image_mask.len(), grids.len());
    }
    let len = image_mask.first().map_or(0, Vec::len);
    let mut out = vec![0f32; image_mask.len() * len * 2];
    for (row, (mask, &[t, h, w])) in image_mask.iter().zip(grids).enumerate() {
        let tokens = mask.iter().filter(|&&m| m).count();
        let patches = (t * h * w) as usize;
        let merge = (1..=h.min(w) as usize).find(|m| {
            m * m * tokens == patches
                && (h as usize).is_multiple_of(*m)
                && (w as usize).is_multiple_of(*m)
        });
        let Some(merge) = merge else {
            candle_core::bail!("row {row}: {tokens} image tokens do not fit the grid {t}x{h}x{w}");
        };
        let (rows, cols) = (h as usize / merge, w as usize / merge);
        for (k, pos) in mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(p, _)| p)
            .enumerate()
        {
            let cell = k % (rows * cols);
            let at = (row * len + pos) * 2;
            out[at] = ((cell % cols) as f32 + 0.5) / cols as f32;
            out[at + 1] = ((cell / cols) as f32 + 0.5) / rows as f32;
        }
    }
    Tensor::from_vec(out, (image_mask.len(), len, 2), device)
}

/// The locus of pooling `weights` `(batch, seq)` over `coords` `(batch, seq, 2)`: `(batch, 4)`
/// as mean x, mean y, spread x, spread y (weighted standard deviations).
pub fn locus(weights: &Tensor, coords: &Tensor) -> Result<Tensor> {
    let w = weights.unsqueeze(2)?;
    let mean = w.broadcast_mul(coords)?.sum(1)?;
    let centred = coords.broadcast_sub(&mean.unsqueeze(1)?)?;
    let var = w.broadcast_mul(&centred.sqr()?)?.sum(1)?;
    // The small floor keeps the square root's gradient finite when the pooling is one-hot.
    let spread = (var + 1e-6)?.sqrt()?;
    Tensor::cat(&[mean, spread], 1)
}

pub struct RoiHead {
    pub pool: AttentionPool,
    fc1: Linear,
    locus: Linear,
    fc2: Linear,
    dropout: f64,
}

impl RoiHead {
    pub fn load(vb: VarBuilder, hidden: usize, c: &HeadsConfig) -> Result<Self> {
        Ok(RoiHead {
            pool: AttentionPool::load(vb.pp("pool"), hidden, c.pool_hidden)?,
            fc1: linear(&vb.pp("fc1"), c.roi_hidden, hidden)?,
            locus: linear_with(&vb.pp("locus"), c.roi_hidden, 4, false)?,
            fc2: linear(&vb.pp("fc2"), 4, c.roi_hidden)?,
            dropout: c.roi_dropout,
        })
    }

    /// Boxes `(batch, 4)` as `x1, y1, x2, y2` in image-relative units, from the states at the
    /// image tokens (`image_mask`, 0/1) and their `coords` ([`image_token_coords`]), and the
    /// pooling's locus `(batch, 4)`. A dropout plan enables dropout (training).
    pub fn forward(
        &self,
        states: &Tensor,
        image_mask: &Tensor,
        coords: &Tensor,
        plan: Option<&DropoutPlan>,
    ) -> Result<(Tensor, Tensor)> {
        let (boxes, region) = self.locate(states, image_mask, coords, plan)?;
        Ok((boxes, region.locus))
    }

    /// As [`RoiHead::forward`], with the pooled state besides the locus.
    pub fn locate(
        &self,
        states: &Tensor,
        image_mask: &Tensor,
        coords: &Tensor,
        plan: Option<&DropoutPlan>,
    ) -> Result<(Tensor, Region)> {
        let (boxes, region, _) = self.locate_with_focus(states, image_mask, coords, plan)?;
        Ok((boxes, region))
    }

    /// As [`RoiHead::locate`], with the log pooling weights `(batch, seq)` for the focus loss
    /// (`losses::focus_loss`).
    ///
    /// The box is read off where the pooling looks, then corrected: its centre is the locus's
    /// mean moved by up to a quarter of the image, its half-sizes the locus's spread times
    /// `sqrt(3)` (the half-width of a uniform spread: a pooling spread evenly over the finding
    /// gives its box) scaled by a factor in `(e^-2, e^2)`; then clipped to the image. A pooling
    /// that has learned where the finding is therefore gives its box from the first step, and the
    /// layers only refine it. (Regressed from the pooled content and locus alone, the box stayed
    /// near the mean box after 1,000 steps at the defaults: held-out IoU 0.11, BENCHMARKS.md.)
    pub fn locate_with_focus(
        &self,
        states: &Tensor,
        image_mask: &Tensor,
        coords: &Tensor,
        plan: Option<&DropoutPlan>,
    ) -> Result<(Tensor, Region, Tensor)> {
        let (pooled, weights, log_weights) = self.pool.forward_with_log(states, image_mask)?;
        let locus = locus(&weights, coords)?;
        let pre = (self.fc1.forward(&pooled)? + self.locus.forward(&locus)?)?;
        let h = dropout(&pre.relu()?, self.dropout, plan)?;
        let raw = self.fc2.forward(&h)?;
        let shift = (raw.narrow(1, 0, 2)?.tanh()? * CENTRE_SHIFT)?;
        let centre = (locus.narrow(1, 0, 2)? + shift)?.clamp(0f32, 1f32)?;
        let scale = ((raw.narrow(1, 2, 2)? * 0.5)?.tanh()? * SIZE_RANGE)?.exp()?;
        let half = ((locus.narrow(1, 2, 2)? * 3f64.sqrt())? * scale)?;
        let low = (&centre - &half)?.clamp(0f32, 1f32)?;
        let high = (&centre + &half)?.clamp(0f32, 1f32)?;
        let boxes = Tensor::cat(&[low, high], 1)?;
        Ok((boxes, Region { pooled, locus }, log_weights))
    }
}

/// How far the ROI head may move the box's centre from the pooling's locus (image units).
const CENTRE_SHIFT: f64 = 0.25;
/// The ROI head scales the locus's half-sizes by a factor in `(e^-SIZE_RANGE, e^SIZE_RANGE)`.
const SIZE_RANGE: f64 = 2.0;

/// How many attention poolings read the text (each its own learned choice of words).
pub const TEXT_POOLS: usize = 4;
/// Width of the text-conditioned attention's queries and keys.
pub const KEY_DIM: usize = 32;
/// Frequencies of the position features ([`position_features`]).
const POSITION_FREQUENCIES: [f64; 3] = [1.0, 2.0, 3.0];
/// Width of [`position_features`]: sine and cosine per frequency per coordinate.
pub const POSITION_FEATURES: usize = 4 * POSITION_FREQUENCIES.len();

/// Fourier features of image positions `(..., 2)` in image units: `sin(pi k x)`, `cos(pi k x)`,
/// then the same for `y`, for `k` in 1..=3, `(..., 12)`. A place in the image becomes a vector
/// that a linear map can compare with a peaked template ("near the middle"), which `x` and `y`
/// themselves cannot.
pub fn position_features(xy: &Tensor) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(POSITION_FEATURES);
    for axis in 0..2 {
        let c = xy.narrow(D::Minus1, axis, 1)?;
        for k in POSITION_FREQUENCIES {
            let angle = (&c * (std::f64::consts::PI * k))?;
            parts.push(angle.sin()?);
            parts.push(angle.cos()?);
        }
    }
    Tensor::cat(&parts, D::Minus1)
}

/// The match head: one logit for an (image, text) pair. It assumes nothing about what the text
/// talks about; it compares what the text says with what the image shows:
///
/// - **the text**: [`TEXT_POOLS`] attention poolings over the text tokens' input embeddings
///   (scaled to unit RMS), so each can settle on its own words ("upper" and "left", or "cyst").
///   Input embeddings, not final states: every final state after the image can see the image,
///   and a text representation read off those learned the image instead of the text (match
///   scores constant, AUC 0.51; BENCHMARKS.md);
/// - **the image**: the ROI pooling's content (what the located finding looks like) and where it
///   lies (Fourier features of its locus), both detached so that verifying does not pull on
///   where the ROI head looks; and a text-conditioned attention over the image tokens (queries
///   from the text, keys from each token's state and position): what the image holds where, or
///   what, the text points at, and where that is;
/// - **the comparison**: the text's and the image's projections multiplied feature by feature (a
///   low-rank bilinear score): whether a text fits an image is an interaction, and a sum of their
///   features carries no first-order signal because every text and every image occur in true and
///   mismatched pairs alike. Added to the seed's path (attention pooling over the whole pair's
///   final states, `fc1`) before the ReLU and `fc2`.
///
/// The seed's head is the seed's path alone: imported seed heads get zero text and image
/// projections, which leaves the seed's logit as it was (`infer::heads`).
pub struct MatchHead {
    pub pool: AttentionPool,
    fc1: Linear,
    fc2: Linear,
    pub text_pools: Vec<AttentionPool>,
    text: Linear,
    query: Linear,
    key: Linear,
    image: Linear,
}

/// The ROI head's reading of an image that the match head compares a text with.
pub struct Region {
    /// The ROI pooling's pooled state `(batch, hidden)`.
    pub pooled: Tensor,
    /// Its locus `(batch, 4)` ([`locus`]).
    pub locus: Tensor,
}

impl MatchHead {
    pub fn load(vb: VarBuilder, hidden: usize, c: &HeadsConfig) -> Result<Self> {
        let text_pools = (0..TEXT_POOLS)
            .map(|i| AttentionPool::load(vb.pp(format!("text_pool.{i}")), hidden, c.pool_hidden))
            .collect::<Result<Vec<_>>>()?;
        Ok(MatchHead {
            pool: AttentionPool::load(vb.pp("pool"), hidden, c.pool_hidden)?,
            fc1: linear(&vb.pp("fc1"), c.match_hidden, hidden)?,
            fc2: linear(&vb.pp("fc2"), 1, c.match_hidden)?,
            text_pools,
            text: linear_with(&vb.pp("text"), c.match_hidden, TEXT_POOLS * hidden, false)?,
            query: linear_with(&vb.pp("query"), KEY_DIM, TEXT_POOLS * hidden, false)?,
            key: linear_with(&vb.pp("key"), KEY_DIM, hidden + POSITION_FEATURES, false)?,
            image: linear_with(
                &vb.pp("image"),
                c.match_hidden,
                2 * (hidden + POSITION_FEATURES),
                false,
            )?,
        })
    }

    /// One logit per row `(batch)`. `states` are the final states, `embeds` the input
    /// embeddings, `valid` and `image_mask` 0/1 `(batch, seq)`, `coords` the image tokens'
    /// positions ([`image_token_coords`]) and `region` the ROI head's reading (detached here).
    /// A row without image tokens gets no image features (all zero).
    pub fn forward(
        &self,
        states: &Tensor,
        valid: &Tensor,
        image_mask: &Tensor,
        embeds: &Tensor,
        coords: &Tensor,
        region: &Region,
    ) -> Result<Tensor> {
        let (pooled, _) = self.pool.forward(states, valid)?;
        // What the text says, from its tokens' input embeddings only.
        let (embeds, text_mask) = (unit_rms(embeds)?, (valid - image_mask)?);
        let text = Tensor::cat(
            &self
                .text_pools
                .iter()
                .map(|p| Ok(p.forward(&embeds, &text_mask)?.0))
                .collect::<Result<Vec<_>>>()?,
            1,
        )?;
        // Where the text points in the image: attention of a text query over the image tokens.
        let tokens = unit_rms(states)?;
        let keys = self.key.forward(&Tensor::cat(
            &[&tokens, &position_features(coords)?],
            D::Minus1,
        )?)?;
        let query = self.query.forward(&text)?;
        let scores = (keys.matmul(&query.unsqueeze(2)?)?.squeeze(2)? / (KEY_DIM as f64).sqrt())?;
        let weights = masked_softmax(&scores, image_mask)?;
        let w = weights.unsqueeze(2)?;
        let attended = w.broadcast_mul(&tokens)?.sum(1)?;
        let attended_at = w.broadcast_mul(coords)?.sum(1)?;
        // What the ROI head found and where, detached.
        let found = unit_rms(&region.pooled.detach())?;
        let found_at = region.locus.detach().narrow(1, 0, 2)?;
        let image = Tensor::cat(
            &[
                found,
                position_features(&found_at)?,
                attended,
                position_features(&attended_at)?,
            ],
            1,
        )?;
        let pair = (self.text.forward(&text)? * self.image.forward(&image)?)?;
        let pre = (self.fc1.forward(&pooled)? + pair)?;
        self.fc2.forward(&pre.relu()?)?.squeeze(1)
    }
}

/// Softmax of `scores` `(batch, seq)` over the positions where `allowed` is 1; a row with no
/// allowed position gets all-zero weights.
fn masked_softmax(scores: &Tensor, allowed: &Tensor) -> Result<Tensor> {
    let shifted = (scores + ((allowed - 1.0)? * 1e9)?)?;
    let max = shifted.max_keepdim(1)?.detach();
    let exp = (shifted.broadcast_sub(&max)?.exp()? * allowed)?;
    exp.broadcast_div(&(exp.sum_keepdim(1)? + 1e-20)?)
}

/// Both heads on a batch's final `hidden` states and input `embeds`: the ROI boxes, the match
/// logits and the ROI pooling's log weights (training, evaluation and inference alike).
pub fn run_heads(
    roi: &RoiHead,
    matcher: &MatchHead,
    hidden: &Tensor,
    embeds: &Tensor,
    batch: &crate::train::data::Batch,
    plan: Option<&DropoutPlan>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (boxes, region, log_weights) =
        roi.locate_with_focus(hidden, &batch.image_mask, &batch.coords, plan)?;
    let logits = matcher.forward(
        hidden,
        &batch.valid,
        &batch.image_mask,
        embeds,
        &batch.coords,
        &region,
    )?;
    Ok((boxes, logits, log_weights))
}

/// `x / sqrt(mean(x^2) + 1e-6)` over the last dimension.
fn unit_rms(x: &Tensor) -> Result<Tensor> {
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
    x.broadcast_div(&rms)
}

/// The centres `(n, 2)` of boxes `(n, 4)` (`x1, y1, x2, y2`).
pub fn box_centre(boxes: &Tensor) -> Result<Tensor> {
    (boxes.narrow(1, 0, 2)? + boxes.narrow(1, 2, 2)?)? * 0.5
}

/// The three learned log-variances `s = (roi, match, lm)`, initialised to 0.
pub struct TaskWeights {
    pub s: Tensor,
}

impl TaskWeights {
    pub fn load(vb: VarBuilder) -> Result<Self> {
        Ok(TaskWeights {
            s: vb.get_with_hints(3, "log_vars", Init::Const(0.0))?,
        })
    }

    /// `sum_i present_i * (0.5 * exp(-s_i) * L_i + share * 0.5 * s_i)` over the tasks in
    /// `losses` `(3)`, and the weighted terms `(3)`. A task with no sample in the whole batch
    /// (`present_i` false: no box, no true pair, no match sample) contributes neither its loss
    /// nor its `s_i` term, so its weight is not pushed down by a batch that says nothing about
    /// it. `share` is 1 for a whole batch; a replica holding a part of it passes
    /// `1 / replicas`, so that the replicas' totals (and gradients) add up to the whole's.
    pub fn combine(
        &self,
        losses: &Tensor,
        present: [bool; 3],
        share: f64,
    ) -> Result<(Tensor, Tensor)> {
        let mask = Tensor::new(
            &present.map(|p| if p { 1f32 } else { 0.0 }),
            losses.device(),
        )?;
        let terms = ((self.s.neg()?.exp()? * losses)? * 0.5)?.add(&(&self.s * (0.5 * share))?)?;
        let terms = (terms * mask)?;
        Ok((terms.sum_all()?, terms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// DESIGN 4.7: the seed's ROI outputs were unbounded and clipped afterwards. Here any state,
    /// however large, gives a box inside the image with ordered corners.
    #[test]
    fn roi_boxes_are_valid_for_any_input() {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let head = RoiHead::load(vb.pp("roi"), 8, &HeadsConfig::default()).unwrap();
        for scale in [1.0, 100.0, 1e4] {
            let states = (Tensor::randn(0f32, 1.0, (3, 5, 8), &dev).unwrap() * scale).unwrap();
            let mask = Tensor::ones((3, 5), DType::F32, &dev).unwrap();
            let coords = (Tensor::rand(0f32, 1.0, (3, 5, 2), &dev).unwrap() * scale).unwrap();
            let (boxes, _) = head.forward(&states, &mask, &coords, None).unwrap();
            for b in boxes.to_vec2::<f32>().unwrap() {
                assert!(b.iter().all(|v| (0.0..=1.0).contains(v)), "{b:?}");
                assert!(b[0] <= b[2] && b[1] <= b[3], "{b:?}");
            }
        }
    }

    /// Tokens of a 4x6-patch image merged 2x2 (2 rows of 3 tokens), after two padding positions
    /// and one text token: each gets the centre of its merged patch, everything else 0.
    #[test]
    fn image_tokens_get_their_patch_centres() {
        let dev = Device::Cpu;
        let mut mask = vec![false; 3];
        mask.extend([true; 6]);
        mask.push(false);
        let coords = image_token_coords(&[mask], &[[1, 4, 6]], &dev).unwrap();
        let c = coords.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let third = 1.0 / 6.0;
        let expected = [
            [0.0, 0.0],
            [0.0, 0.0],
            [0.0, 0.0],
            [third, 0.25],
            [0.5, 0.25],
            [5.0 * third, 0.25],
            [third, 0.75],
            [0.5, 0.75],
            [5.0 * third, 0.75],
            [0.0, 0.0],
        ];
        for (got, want) in c.iter().zip(expected) {
            assert!((got[0] - want[0]).abs() < 1e-6 && (got[1] - want[1]).abs() < 1e-6);
        }
        // 5 tokens cannot tile a 4x6 grid under any merge size.
        let bad = vec![true; 5];
        assert!(image_token_coords(&[bad], &[[1, 4, 6]], &dev).is_err());
    }

    /// Pooling all weight on one token puts the locus on its centre with (almost) no spread;
    /// equal weight on two tokens puts it half way, spread by half their distance.
    #[test]
    fn locus_is_the_weighted_mean_and_spread() {
        let dev = Device::Cpu;
        let coords = Tensor::new(&[[[0.25f32, 0.75], [0.75, 0.25], [0.0, 0.0]]], &dev).unwrap();
        let one = Tensor::new(&[[1f32, 0.0, 0.0]], &dev).unwrap();
        let l = locus(&one, &coords).unwrap().to_vec2::<f32>().unwrap();
        assert!((l[0][0] - 0.25).abs() < 1e-6 && (l[0][1] - 0.75).abs() < 1e-6);
        assert!(l[0][2] < 2e-3 && l[0][3] < 2e-3);
        let two = Tensor::new(&[[0.5f32, 0.5, 0.0]], &dev).unwrap();
        let l = locus(&two, &coords).unwrap().to_vec2::<f32>().unwrap();
        for (got, want) in l[0].iter().zip([0.5, 0.5, 0.25, 0.25]) {
            assert!((got - want).abs() < 1e-4, "{:?}", l[0]);
        }
    }

    /// A task absent from a batch adds nothing: its term is 0 and its `s` gets no gradient,
    /// while the present tasks' terms are as before.
    #[test]
    fn an_absent_task_adds_neither_its_loss_nor_its_weight() {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let task = TaskWeights::load(vb).unwrap();
        let var = vars.all_vars().pop().unwrap();
        var.set(&Tensor::new(&[0.5f32, -0.3, 0.2], &dev).unwrap())
            .unwrap();
        let losses = Tensor::new(&[1.5f32, 0.7, 2.0], &dev).unwrap();
        let (total, terms) = task.combine(&losses, [false, true, true], 1.0).unwrap();
        let t = terms.to_vec1::<f32>().unwrap();
        assert_eq!(t[0], 0.0);
        let expect = |s: f32, l: f32| 0.5 * (-s).exp() * l + 0.5 * s;
        assert!((t[1] - expect(-0.3, 0.7)).abs() < 1e-6);
        assert!((t[2] - expect(0.2, 2.0)).abs() < 1e-6);
        let grads = total.backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g[0], 0.0);
        assert!(g[1].abs() > 1e-3 && g[2].abs() > 1e-3);
    }

    /// DESIGN 4.4: the seed's pooling softmax ran over padding. Masked positions get exactly
    /// zero weight, so whatever sits in them (here huge values) cannot move the pooled state.
    #[test]
    fn padding_gets_no_pooling_weight() {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let pool = AttentionPool::load(vb, 8, 16).unwrap();
        let states = Tensor::randn(0f32, 1.0, (2, 6, 8), &dev).unwrap();
        // Row 0 is left-padded by two positions, row 1 by none.
        let mask = Tensor::new(
            &[[0f32, 0., 1., 1., 1., 1.], [1., 1., 1., 1., 1., 1.]],
            &dev,
        )
        .unwrap();
        let (pooled, weights) = pool.forward(&states, &mask).unwrap();
        let w = weights.to_vec2::<f32>().unwrap();
        assert_eq!(&w[0][..2], &[0.0, 0.0]);
        assert!((w[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let junk = Tensor::full(1e4f32, (1, 2, 8), &dev).unwrap();
        let poisoned = Tensor::cat(
            &[
                Tensor::cat(
                    &[
                        &junk,
                        &states.narrow(1, 2, 4).unwrap().narrow(0, 0, 1).unwrap(),
                    ],
                    1,
                )
                .unwrap(),
                states.narrow(0, 1, 1).unwrap(),
            ],
            0,
        )
        .unwrap();
        let (again, _) = pool.forward(&poisoned, &mask).unwrap();
        let diff = (pooled - again).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
