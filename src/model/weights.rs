//! Strict loading of a Qwen3-VL checkpoint: every tensor the architecture needs must be in the
//! files with the right shape, and nothing else may be; the error names each offender.
//!
//! Names are those transformers 5 saves for `Qwen3VLForConditionalGeneration`
//! (`model.visual.*`, `model.language_model.*`, `lm_head.weight`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
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

/// Where one tensor lies in a safetensors file.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: u64,
    len: usize,
}

/// Tensors read from the safetensors files one at a time with positioned reads, so loading
/// holds no more than the model plus one tensor in memory (a memory map would keep every page
/// it touched resident next to the copies, about twice the model at the peak).
pub struct FileTensors {
    files: Vec<(PathBuf, std::fs::File)>,
    entries: HashMap<String, Entry>,
    /// The dtype the large matrices are kept in (see [`stored_as_is`]); everything else is read
    /// in the dtype the model computes in.
    storage: DType,
}

/// The model computes in the dtype its weights are stored in, except on the CPU, where candle
/// has no bf16/f16 matrix product of its own (it widens both operands on every call): there the
/// large matrices stay in their storage dtype (half the memory), are widened one at a time for
/// their product, and everything else is f32.
pub fn compute_dtype(storage: DType, device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        storage
    }
}

/// Whether a tensor is one of the large matrices kept in the storage dtype: the linear layers'
/// weights, the token embeddings and the LM head (2-D `*.weight`), not the vision tower's
/// position table (it is mixed with weights in the compute dtype).
fn stored_as_is(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with(".weight") && !name.ends_with("pos_embed.weight")
}

impl FileTensors {
    fn open(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata()?.len();
            let mut len_bytes = [0u8; 8];
            std::io::Read::read_exact(&mut file, &mut len_bytes)
                .with_context(|| format!("{} is not a safetensors file", path.display()))?;
            let header_len = u64::from_le_bytes(len_bytes);
            if header_len > 100 << 20 || 8 + header_len > size {
                bail!(
                    "{} is not a safetensors file (bad header size)",
                    path.display()
                );
            }
            let mut header = vec![0u8; header_len as usize];
            std::io::Read::read_exact(&mut file, &mut header)?;
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&header).with_context(|| {
                    format!("{}: unreadable safetensors header", path.display())
                })?;
            let base = 8 + header_len;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let bad = || format!("{}: bad header entry for {name}", path.display());
                let dtype = match info["dtype"].as_str() {
                    Some("F32") => DType::F32,
                    Some("BF16") => DType::BF16,
                    Some("F16") => DType::F16,
                    Some(other) => {
                        bail!("tensor {name} is {other}; weights must be F32, BF16 or F16")
                    }
                    None => bail!(bad()),
                };
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                    .with_context(bad)?;
                let offsets: Vec<u64> = info["data_offsets"]
                    .as_array()
                    .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect())
                    .with_context(bad)?;
                let [from, to] = offsets[..] else {
                    bail!(bad())
                };
                let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
                if to < from || (to - from) as usize != expected || base + to > size {
                    bail!(
                        "{}: the data of {name} does not fit its shape or the file",
                        path.display()
                    );
                }
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype,
                        shape,
                        start: base + from,
                        len: expected,
                    },
                );
            }
            files.push((path.clone(), file));
        }
        Ok(FileTensors {
            files,
            entries,
            storage: DType::F32,
        })
    }

    /// Whether the files hold `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Reads tensor `name`, converted to `dtype`.
    pub fn read(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        use std::os::unix::fs::FileExt;
        let Some(e) = self.entries.get(name) else {
            candle_core::bail!("no tensor {name} in the checkpoint");
        };
        let (path, file) = &self.files[e.file];
        let mut bytes = vec![0u8; e.len];
        file.read_exact_at(&mut bytes, e.start).map_err(|err| {
            candle_core::Error::Msg(format!("cannot read {name} from {}: {err}", path.display()))
        })?;
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device)?;
        drop(bytes);
        t.to_dtype(dtype)
    }
}

impl candle_nn::var_builder::SimpleBackend for FileTensors {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dtype = if stored_as_is(name, s.rank()) {
            self.storage
        } else {
            dtype
        };
        let t = self.read(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name} is {:?}, the model needs {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Opens the checkpoint after checking every name and shape; tensors are read as the model asks
/// for them, the large matrices converted to `dtype` and the rest to [`compute_dtype`].
pub fn load(
    config: &Qwen3VlConfig,
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<VarBuilder<'static>> {
    let mut tensors = open_checked(config, dir)?;
    tensors.storage = dtype;
    Ok(VarBuilder::from_backend(
        Box::new(tensors),
        compute_dtype(dtype, device),
        device.clone(),
    ))
}

/// The checkpoint's tensors after checking every name and shape against `config`.
pub fn open_checked(config: &Qwen3VlConfig, dir: &Path) -> anyhow::Result<FileTensors> {
    let files = checkpoint_files(dir)?;
    let tensors = FileTensors::open(&files)?;
    let found: HashMap<String, Vec<usize>> = tensors
        .entries
        .iter()
        .map(|(k, e)| (k.clone(), e.shape.clone()))
        .collect();
    check_names(config, &found)?;
    Ok(tensors)
}
