//! Text generation for one prompt: greedy or temperature/top-p sampling, stop tokens, a token
//! limit, and each new token handed to a callback as soon as it exists.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::ensure;
use candle_core::{DType, IndexOp};

use super::ops::Exec;
use super::qwen3_vl::{ModelInput, ModelOutput, Qwen3Vl};
use super::random::SplitMix;
use super::text::KvCache;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first of equals).
    Greedy,
    /// Sample from the smallest set of most likely tokens whose probability reaches `top_p`,
    /// after dividing the logits by `temperature`.
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends after any of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    MaxNewTokens,
    /// The callback asked to stop.
    Cancelled,
    /// The model's context is full.
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    /// Seconds for the prompt (vision tower included) up to the first token's logits.
    pub prefill_seconds: f64,
    /// Seconds for the tokens after the first.
    pub decode_seconds: f64,
}

/// Picks a token from one row of logits.
fn choose(logits: &[f32], sampling: Sampling, rng: &mut SplitMix) -> u32 {
    match sampling {
        Sampling::Greedy => {
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            best as u32
        }
        Sampling::TopP {
            temperature, top_p, ..
        } => {
            let t = temperature.max(1e-6);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut probs: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as u32, ((v as f64 - max) / t).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0.0;
            let mut cut = probs.len();
            for (i, p) in probs.iter().enumerate() {
                kept += p.1 / total;
                if kept >= top_p {
                    cut = i + 1;
                    break;
                }
            }
            let probs = &probs[..cut];
            let mass: f64 = probs.iter().map(|p| p.1).sum();
            let mut r = rng.uniform() * mass;
            for p in probs {
                r -= p.1;
                if r <= 0.0 {
                    return p.0;
                }
            }
            probs[probs.len() - 1].0
        }
    }
}

/// Generates up to `config.max_new_tokens` tokens after `input` (one row). `on_token` sees each
/// new token and may stop generation with `ControlFlow::Break`.
pub fn generate(
    model: &Qwen3Vl,
    input: &ModelInput,
    config: &GenerationConfig,
    cache: &mut KvCache,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> anyhow::Result<Generation> {
    generate_observed(model, input, config, cache, |_| Ok(()), on_token, |_| {})
}

/// [`generate`], handing the prompt's final hidden states to `on_prefill` before the first
/// token is chosen (the task heads read them: in a causal model the prompt's states do not
/// depend on what follows), and the final hidden state `(1, 1, hidden)` of each token fed back
/// into the model to `on_state` (every generated token but the last: generation ends before the
/// last one goes in).
pub fn generate_observed(
    model: &Qwen3Vl,
    input: &ModelInput,
    config: &GenerationConfig,
    cache: &mut KvCache,
    on_prefill: impl FnOnce(&ModelOutput) -> anyhow::Result<()>,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    mut on_state: impl FnMut(&candle_core::Tensor),
) -> anyhow::Result<Generation> {
    ensure!(input.batch() == 1, "generation takes one prompt at a time");
    if let Sampling::TopP {
        temperature, top_p, ..
    } = config.sampling
    {
        ensure!(temperature > 0.0, "temperature must be above 0");
        ensure!(top_p > 0.0 && top_p <= 1.0, "top-p must be in (0, 1]");
    }
    let seed = match config.sampling {
        Sampling::TopP { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rng = SplitMix::new(seed);
    let context = model.config().text.max_position_embeddings as i64;
    let exec = Exec::Fused;
    let started = Instant::now();
    let out = model.prefill(input, cache, exec)?;
    on_prefill(&out)?;
    let last = out.hidden.i((0, input.seq_len() - 1))?;
    let mut logits = model.logits(&last)?.to_dtype(DType::F32)?;
    let prefill_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tokens = Vec::new();
    let stop = loop {
        if tokens.len() >= config.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        let row: Vec<f32> = logits.to_vec1()?;
        let token = choose(&row, config.sampling, &mut rng);
        tokens.push(token);
        if on_token(token).is_break() {
            break StopReason::Cancelled;
        }
        if config.stop_tokens.contains(&token) {
            break StopReason::StopToken;
        }
        if tokens.len() >= config.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if cache.next_position.first().is_some_and(|&p| p >= context) {
            break StopReason::ContextFull;
        }
        let hidden = model.step(&[token], cache, exec)?;
        on_state(&hidden);
        logits = model.logits(&hidden.i((0, 0))?)?.to_dtype(DType::F32)?;
    };
    Ok(Generation {
        token_ids: tokens,
        prompt_tokens: input.seq_len(),
        stop,
        prefill_seconds,
        decode_seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = SplitMix::new(0);
        assert_eq!(choose(&[0.0, 2.0, 2.0, 1.0], Sampling::Greedy, &mut rng), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus_and_is_seeded() {
        let logits = [5.0, 4.9, -10.0, -10.0];
        let s = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = SplitMix::new(seed);
            (0..200)
                .map(|_| choose(&logits, s, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert!(a.iter().all(|&t| t < 2), "only the two likely tokens");
        assert!(a.contains(&0) && a.contains(&1));
        assert_eq!(a, draw(7));
    }
}
