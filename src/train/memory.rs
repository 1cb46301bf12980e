//! Whether a training step fits: an estimate of the memory a batch needs on top of the loaded
//! model, checked against what the machine has free before the batch runs, so that a run that
//! cannot fit stops with a message that names the setting to change instead of being killed.
//!
//! The estimate follows what a step keeps alive (DESIGN 8): with activation recompute each
//! decoder layer's input for the whole batch plus one layer's activations at a time; without it
//! every layer's; the vision tower one block at a time (it keeps no graph unless LoRA targets
//! it); one chunk of vocabulary-wide logits; the trainable parameters with their gradients and
//! AdamW moments. Its terms were checked against the measured peak of the real 2B architecture
//! (BENCHMARKS.md, "A 2B LoRA step").

use candle_core::Device;

use crate::model::config::Qwen3VlConfig;

/// The shape of the part of a batch one replica computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepShape {
    pub samples: usize,
    /// Tokens of the longest sample (the batch is padded to it).
    pub tokens: usize,
    /// Patches of all images together (before merging).
    pub patches: usize,
    /// Patches of the largest image (its attention is the largest).
    pub largest_image: usize,
}

/// What the estimate needs to know of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    pub recompute: bool,
    /// Bytes per activation value (4 for f32 compute, 2 for bf16).
    pub activation_bytes: usize,
    pub lm_chunk: usize,
    /// Answer tokens of the batch (rows of the LM loss).
    pub lm_rows: usize,
    pub trainable_parameters: usize,
    /// Whether LoRA sits in the vision tower (then it keeps a graph there too).
    pub vision_trains: bool,
}

/// Estimated bytes one step needs beyond the loaded base model.
pub fn step_bytes(c: &Qwen3VlConfig, shape: StepShape, s: StepSettings) -> u64 {
    let a = s.activation_bytes as u64;
    let (b, t) = (shape.samples as u64, shape.tokens as u64);
    let text = &c.text;
    let (h, inter) = (text.hidden_size as u64, text.intermediate_size as u64);
    let heads = text.num_attention_heads as u64;
    let qkv =
        (text.num_attention_heads + 2 * text.num_key_value_heads) as u64 * text.head_dim as u64;
    // One decoder layer's activations in the graph: norms and residuals (about 8 values of the
    // hidden size per token), q/k/v with their norms and rotary (3x), the MLP (gate, up, the
    // activation and product: 5 of the intermediate size), attention scores, their softmax and
    // mask sum (3 per query-key pair and head).
    let layer = b * t * (8 * h + 3 * qkv + 5 * inter) * a + 3 * b * heads * t * t * a;
    let layers = text.num_hidden_layers as u64;
    let text_bytes = if s.recompute {
        // Layer inputs, one layer in recompute, and its backward (about as large again).
        layers * b * t * h * a + 2 * layer
    } else {
        layers * layer
    };
    let v = &c.vision;
    let (vh, vi) = (v.hidden_size as u64, v.intermediate_size as u64);
    let p = shape.patches as u64;
    let vision_block = p * (8 * vh + 3 * vi) * a
        + 3 * v.num_heads as u64 * (shape.largest_image as u64).pow(2) * a;
    let vision_bytes = if s.vision_trains && !s.recompute {
        v.depth as u64 * vision_block
    } else {
        2 * vision_block
    };
    // The vision tower's outputs (merged tokens and the DeepStack features) and the hidden
    // states the heads read, in f32.
    let carried = (1 + v.deepstack_visual_indexes.len() as u64) * b * t * h * 4 + b * t * h * 4;
    // Logits, their softmax and its gradient for one chunk of rows.
    let lm = 3 * (s.lm_chunk.min(s.lm_rows.max(1)) as u64) * text.vocab_size as u64 * 4;
    // Parameters, gradients (per batch and accumulated) and two AdamW moments, f32.
    let trainable = 5 * s.trainable_parameters as u64 * 4;
    text_bytes + vision_bytes + carried + lm + trainable
}

/// Bytes the process can still allocate on `device`, where it can be known: on the CPU the
/// smaller of the system's available memory (`MemAvailable`), the cgroup's limit less its use,
/// and the address-space limit (`ulimit -v`) less what is mapped. `None` where unknown (a GPU:
/// candle does not report its free memory).
pub fn available_bytes(device: &Device) -> Option<u64> {
    if !device.is_cpu() {
        return None;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut free = field_kib(&meminfo, "MemAvailable:")? * 1024;
    if let (Some(max), Some(current)) = (
        read_u64("/sys/fs/cgroup/memory.max"),
        read_u64("/sys/fs/cgroup/memory.current"),
    ) {
        free = free.min(max.saturating_sub(current));
    }
    if let Some(limit) = address_space_limit() {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mapped = field_kib(&status, "VmSize:")? * 1024;
        free = free.min(limit.saturating_sub(mapped));
    }
    Some(free)
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(target_os = "linux")]
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(target_os = "linux"))]
fn address_space_limit() -> Option<u64> {
    None
}

/// `bytes` in GiB for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::folder::{init_config, InitSize};

    /// Recompute keeps a fraction of the activations; more images and tokens need more.
    #[test]
    fn the_estimate_grows_with_the_batch_and_shrinks_with_recompute() {
        let c = Qwen3VlConfig::from_json(&init_config(InitSize::Qwen2b)).unwrap();
        let shape = StepShape {
            samples: 2,
            tokens: 260,
            patches: 1568,
            largest_image: 784,
        };
        let settings = StepSettings {
            recompute: true,
            activation_bytes: 4,
            lm_chunk: 128,
            lm_rows: 60,
            trainable_parameters: 6_000_000,
            vision_trains: false,
        };
        let with = step_bytes(&c, shape, settings);
        let without = step_bytes(
            &c,
            shape,
            StepSettings {
                recompute: false,
                ..settings
            },
        );
        assert!(without > 3 * with, "{without} vs {with}");
        let bigger = StepShape {
            samples: 4,
            tokens: 520,
            patches: 4 * 1568,
            largest_image: 1568,
        };
        assert!(step_bytes(&c, bigger, settings) > 2 * with);
    }

    #[test]
    fn the_cpu_reports_its_free_memory() {
        let free = available_bytes(&Device::Cpu).unwrap();
        assert!(free > 0);
    }
}
