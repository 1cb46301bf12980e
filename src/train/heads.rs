//! The task heads that sit on Qwen3-VL's final hidden states.
//!
//! Each head pools the states it may look at with masked attention pooling (padding and, for the
//! ROI head, everything but the image tokens get exactly zero weight), then:
//! - the ROI head predicts a box that is valid by construction: `x1, y1` in (0, 1) and
//!   `x2 in (x1, 1)`, `y2 in (y1, 1)`, all in image-relative units;
//! - the match head scores the (image, text) pair with one logit.
//!
//! Both also read the ROI pooling's *locus*: the mean and the spread of the image tokens' grid
//! coordinates under the ROI pooling weights (a soft argmax, as in DSNT or CoordConv). A vision
//! transformer's final states carry little absolute position (in the tiny random model about 5%
//! of an image token's state; BENCHMARKS.md, learning proof), so a box regressed from pooled
//! content alone cannot say *where*; the locus can. The match head gets it detached, so that
//! verifying a text against the located region does not pull on where the ROI head looks, and
//! both adds it to and scales by it the pair's features; it also compares the place the text's
//! input embeddings point at with the centre of the ROI head's box (see [`MatchHead`]). The seed's heads have no locus:
//! imported seed heads get zero locus weights (`infer::heads`).
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

/// A linear layer without bias whose weights all start at `value`.
/// The match head's FiLM weights start at zero: the head starts as the plain sum.
pub const FILM_INIT: f64 = 0.0;
/// The agreement weights start at -36 per coordinate: a miss by a sixth of the image costs one
/// logit.
pub const AGREE_INIT: f64 = -36.0;

/// The start value of a head parameter that starts at a constant rather than at random, by its
/// name in the heads' variable map (`match.*` as the trainer names them). Random initialisation
/// must leave these alone: at a random value the agreement term is too weak to learn from (match
/// AUC 0.55-0.74 with it overwritten, BENCHMARKS.md).
pub fn constant_init(name: &str) -> Option<f64> {
    match name {
        "match.film.weight" => Some(FILM_INIT),
        "match.agree.weight" => Some(AGREE_INIT),
        _ => None,
    }
}

fn constant_linear(vb: &VarBuilder, out: usize, inp: usize, value: f64) -> Result<Linear> {
    Ok(Linear {
        weight: vb.get_with_hints((out, inp), "weight", Init::Const(value))?,
        bias: None,
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
        let exp = (shifted.broadcast_sub(&max)?.exp()? * allowed)?;
        let weights = exp.broadcast_div(&exp.sum_keepdim(1)?)?;
        let pooled = weights.unsqueeze(2)?.broadcast_mul(states)?.sum(1)?;
        Ok((pooled, weights))
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
        let (pooled, weights) = self.pool.forward(states, image_mask)?;
        let locus = locus(&weights, coords)?;
        let pre = (self.fc1.forward(&pooled)? + self.locus.forward(&locus)?)?;
        let h = dropout(&pre.relu()?, self.dropout, plan)?;
        let raw = candle_nn::ops::sigmoid(&self.fc2.forward(&h)?)?;
        let x1 = raw.narrow(1, 0, 1)?;
        let y1 = raw.narrow(1, 1, 1)?;
        // The far corner lies between the near one and the image edge.
        let x2 = (&x1 + (1.0 - &x1)?.mul(&raw.narrow(1, 2, 1)?)?)?;
        let y2 = (&y1 + (1.0 - &y1)?.mul(&raw.narrow(1, 3, 1)?)?)?;
        Ok((Tensor::cat(&[x1, y1, x2, y2], 1)?, locus))
    }
}

pub struct MatchHead {
    pub pool: AttentionPool,
    fc1: Linear,
    locus: Linear,
    /// Scales each hidden feature of the pair by `1 + film(locus)` (FiLM). Whether a text fits
    /// the image is an interaction: the place a text names and the place the lesion lies are each
    /// spread evenly over true and swapped pairs, so a sum of their features carries no
    /// first-order signal and the head stays at chance; a product does. Starts at zero, where
    /// the head is the plain sum.
    film: Linear,
    fc2: Linear,
    /// Pool the text tokens' input embeddings, one pooling per coordinate: what the text says,
    /// with nothing of the image. A text names the row and the column in different words
    /// ("upper left"); one shared pooling settled on the row words and read no column in 1,000
    /// steps (match AUC 0.85, BENCHMARKS.md).
    pub text_pool_x: AttentionPool,
    pub text_pool_y: AttentionPool,
    /// Where the text says the region should be, `x` and `y` each through a sigmoid. Besides
    /// the match loss, the place loss teaches them directly: on true pairs with a box they are
    /// that box's centre.
    place_x: Linear,
    place_y: Linear,
    /// Weighs the squared miss between that place and the ROI head's box centre into the
    /// logit. A text that names a place is right about an image when the region is there: this
    /// is the comparison itself, not something the ReLU layer must discover. Starts at
    /// [`AGREE_INIT`].
    agree: Linear,
}

impl MatchHead {
    pub fn load(vb: VarBuilder, hidden: usize, c: &HeadsConfig) -> Result<Self> {
        Ok(MatchHead {
            pool: AttentionPool::load(vb.pp("pool"), hidden, c.pool_hidden)?,
            fc1: linear(&vb.pp("fc1"), c.match_hidden, hidden)?,
            locus: linear_with(&vb.pp("locus"), c.match_hidden, 4, false)?,
            film: constant_linear(&vb.pp("film"), c.match_hidden, 4, FILM_INIT)?,
            fc2: linear(&vb.pp("fc2"), 1, c.match_hidden)?,
            text_pool_x: AttentionPool::load(vb.pp("text_pool_x"), hidden, c.pool_hidden)?,
            text_pool_y: AttentionPool::load(vb.pp("text_pool_y"), hidden, c.pool_hidden)?,
            place_x: linear(&vb.pp("place_x"), 1, hidden)?,
            place_y: linear(&vb.pp("place_y"), 1, hidden)?,
            agree: constant_linear(&vb.pp("agree"), 1, 2, AGREE_INIT)?,
        })
    }

    /// One logit per row `(batch)` for the pair, pooled over the valid tokens (`valid`, 0/1),
    /// and the place the text names `(batch, 2)`. `locus` is the ROI pooling's, `centre` the
    /// centre of the ROI head's box (both detached here). The place is read off the input
    /// embeddings `embeds` of the text tokens (the valid ones not in `image_mask`): every final
    /// state of a causal model after the image can see the image, and a place read off those
    /// learned where the image's region is and agreed with every image (match scores constant,
    /// AUC 0.51). The embeddings are scaled to unit RMS first: at their own scale (a standard
    /// deviation of 0.02 in a freshly initialised model) the pooling's scores stay flat and its
    /// gradients tiny, and the place did not learn even when taught directly (BENCHMARKS.md).
    pub fn forward(
        &self,
        states: &Tensor,
        valid: &Tensor,
        image_mask: &Tensor,
        embeds: &Tensor,
        locus: &Tensor,
        centre: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (pooled, _) = self.pool.forward(states, valid)?;
        let (embeds, text) = (unit_rms(embeds)?, (valid - image_mask)?);
        let (text_x, _) = self.text_pool_x.forward(&embeds, &text)?;
        let (text_y, _) = self.text_pool_y.forward(&embeds, &text)?;
        let locus = locus.detach();
        let scale = (self.film.forward(&locus)? + 1.0)?;
        let pre = ((self.fc1.forward(&pooled)? * scale)? + self.locus.forward(&locus)?)?;
        let place = candle_nn::ops::sigmoid(&Tensor::cat(
            &[
                self.place_x.forward(&text_x)?,
                self.place_y.forward(&text_y)?,
            ],
            1,
        )?)?;
        let miss = (&place - centre.detach())?.sqr()?;
        let logits = (self.fc2.forward(&pre.relu()?)?.squeeze(1)?
            + self.agree.forward(&miss)?.squeeze(1)?)?;
        Ok((logits, place))
    }
}

/// Both heads on a batch's final `hidden` states and input `embeds`: the ROI boxes, the match
/// logits and the places the texts name (training, evaluation and inference alike).
pub fn run_heads(
    roi: &RoiHead,
    matcher: &MatchHead,
    hidden: &Tensor,
    embeds: &Tensor,
    batch: &crate::train::data::Batch,
    plan: Option<&DropoutPlan>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (boxes, locus) = roi.forward(hidden, &batch.image_mask, &batch.coords, plan)?;
    let (logits, place) = matcher.forward(
        hidden,
        &batch.valid,
        &batch.image_mask,
        embeds,
        &locus,
        &box_centre(&boxes)?,
    )?;
    Ok((boxes, logits, place))
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

    /// `sum_i 0.5 * exp(-s_i) * L_i + share * 0.5 * s_i` over the tasks in `losses` `(3)`, and
    /// the weighted terms `(3)`. `share` is 1 for a whole batch; a replica holding a part of it
    /// passes `1 / replicas`, so that the replicas' totals (and gradients) add up to the whole's.
    pub fn combine(&self, losses: &Tensor, share: f64) -> Result<(Tensor, Tensor)> {
        let terms = ((self.s.neg()?.exp()? * losses)? * 0.5)?.add(&(&self.s * (0.5 * share))?)?;
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
