//! Strict loading of a Qwen3-VL checkpoint: every tensor the architecture needs must be in the
//! files with the right shape, and nothing else may be; the error names each offender.
//!
//! Names are those transformers 5 saves for `Qwen3VLForConditionalGeneration`
//! (`model.visual.*`, `model.language_model.*`, `lm_head.weight`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::config::Qwen3VlConfig;

/// Every tensor of the model, with its shape, in a stable order.
pub fn expected_shapes(config: &Qwen3VlConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| out.push((name, shape.to_vec()));
    let v = &config.vision;
    let vh = v.hidden_size;
    let merged = vh * v.spatial_merge_size * v.spatial_merge_size;
    let p = "model.visual";
    add(
        format!("{p}.patch_embed.proj.weight"),
        &[
            vh,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ],
    );
    add(format!("{p}.patch_embed.proj.bias"), &[vh]);
    add(
        format!("{p}.pos_embed.weight"),
        &[v.num_position_embeddings, vh],
    );
    for i in 0..v.depth {
        let b = format!("{p}.blocks.{i}");
        for norm in ["norm1", "norm2"] {
            add(format!("{b}.{norm}.weight"), &[vh]);
            add(format!("{b}.{norm}.bias"), &[vh]);
        }
        add(format!("{b}.attn.qkv.weight"), &[3 * vh, vh]);
        add(format!("{b}.attn.qkv.bias"), &[3 * vh]);
        add(format!("{b}.attn.proj.weight"), &[vh, vh]);
        add(format!("{b}.attn.proj.bias"), &[vh]);
        add(
            format!("{b}.mlp.linear_fc1.weight"),
            &[v.intermediate_size, vh],
        );
        add(format!("{b}.mlp.linear_fc1.bias"), &[v.intermediate_size]);
        add(
            format!("{b}.mlp.linear_fc2.weight"),
            &[vh, v.intermediate_size],
        );
        add(format!("{b}.mlp.linear_fc2.bias"), &[vh]);
    }
    let mut merger = |prefix: String, norm: usize| {
        add(format!("{prefix}.norm.weight"), &[norm]);
        add(format!("{prefix}.norm.bias"), &[norm]);
        add(format!("{prefix}.linear_fc1.weight"), &[merged, merged]);
        add(format!("{prefix}.linear_fc1.bias"), &[merged]);
        add(
            format!("{prefix}.linear_fc2.weight"),
            &[v.out_hidden_size, merged],
        );
        add(format!("{prefix}.linear_fc2.bias"), &[v.out_hidden_size]);
    };
    merger(format!("{p}.merger"), vh);
    for j in 0..v.deepstack_visual_indexes.len() {
        merger(format!("{p}.deepstack_merger_list.{j}"), merged);
    }

    let t = &config.text;
    let h = t.hidden_size;
    let (q, kv) = (
        t.num_attention_heads * t.head_dim,
        t.num_key_value_heads * t.head_dim,
    );
    let p = "model.language_model";
    add(format!("{p}.embed_tokens.weight"), &[t.vocab_size, h]);
    for i in 0..t.num_hidden_layers {
        let l = format!("{p}.layers.{i}");
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(format!("{l}.self_attn.{name}.weight"), &[rows, h]);
            if t.attention_bias {
                add(format!("{l}.self_attn.{name}.bias"), &[rows]);
            }
        }
        add(format!("{l}.self_attn.o_proj.weight"), &[h, q]);
        if t.attention_bias {
            add(format!("{l}.self_attn.o_proj.bias"), &[h]);
        }
        add(format!("{l}.self_attn.q_norm.weight"), &[t.head_dim]);
        add(format!("{l}.self_attn.k_norm.weight"), &[t.head_dim]);
        add(
            format!("{l}.mlp.gate_proj.weight"),
            &[t.intermediate_size, h],
        );
        add(format!("{l}.mlp.up_proj.weight"), &[t.intermediate_size, h]);
        add(
            format!("{l}.mlp.down_proj.weight"),
            &[h, t.intermediate_size],
        );
        add(format!("{l}.input_layernorm.weight"), &[h]);
        add(format!("{l}.post_attention_layernorm.weight"), &[h]);
    }
    add(format!("{p}.norm.weight"), &[h]);
    if !config.tie_word_embeddings {
        add("lm_head.weight".into(), &[t.vocab_size, h]);
    }
    out
}

/// The safetensors files of a model folder: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists.
pub fn checkpoint_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if !index.is_file() {
        bail!(
            "{} has neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        );
    }
    let v = crate::data::files::read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for file in map.values() {
        let name = file.as_str().with_context(|| {
            format!("{}: a weight_map entry is not a file name", index.display())
        })?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            bail!("{}: shard name {name:?} leaves the folder", index.display());
        }
        let path = dir.join(name);
        if !files.contains(&path) {
            if !path.is_file() {
                bail!("{}: shard {name} is missing", index.display());
            }
            files.push(path);
        }
    }
    Ok(files)
}

/// A list of names in an error: the first few, then how many more.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Checks the tensors in `found` (name to shape) against the architecture.
pub fn check_names(
    config: &Qwen3VlConfig,
    found: &HashMap<String, Vec<usize>>,
) -> anyhow::Result<()> {
    let expected: BTreeMap<String, Vec<usize>> = expected_shapes(config).into_iter().collect();
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    for (name, shape) in &expected {
        match found.get(name) {
            None => missing.push(name.clone()),
            Some(s) if s != shape => {
                wrong_shape.push(format!("{name} is {s:?}, config says {shape:?}"))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<String> = found
        .keys()
        // A tied checkpoint may still carry the (identical) head; it is not used.
        .filter(|n| {
            let tied_head = config.tie_word_embeddings && *n == "lm_head.weight";
            !expected.contains_key(*n) && !tied_head
        })
        .cloned()
        .collect();
    unexpected.sort();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing: {}",
            missing.len(),
            name_list(&missing)
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} unexpected: {}",
            unexpected.len(),
            name_list(&unexpected)
        ));
    }
    if !wrong_shape.is_empty() {
        problems.push(format!(
            "{} with the wrong shape: {}",
            wrong_shape.len(),
            name_list(&wrong_shape)
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the checkpoint does not match config.json: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// Memory-maps the checkpoint after checking every name and shape; tensors are converted to
/// `dtype` as they are read.
pub fn load(
    config: &Qwen3VlConfig,
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<VarBuilder<'static>> {
    let files = checkpoint_files(dir)?;
    // SAFETY: the files are mapped read-only; roiscope never writes to a model folder while a
    // model from it is loaded.
    let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .with_context(|| format!("cannot read the safetensors files in {}", dir.display()))?;
    let mut found = HashMap::new();
    for (name, view) in tensors.tensors() {
        match view.dtype() {
            safetensors::Dtype::F32 | safetensors::Dtype::BF16 | safetensors::Dtype::F16 => {}
            other => bail!("tensor {name} is {other:?}; weights must be f32, bf16 or f16"),
        }
        found.insert(name, view.shape().to_vec());
    }
    check_names(config, &found)?;
    Ok(VarBuilder::from_backend(
        Box::new(tensors),
        dtype,
        device.clone(),
    ))
}
