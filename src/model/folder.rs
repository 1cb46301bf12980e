//! A model folder as Hugging Face lays it out: `config.json`, `model.safetensors` (or shards
//! with `model.safetensors.index.json`), `tokenizer.json`, `preprocessor_config.json`, and
//! optionally `generation_config.json`. [`ModelFolder::open`] loads all of it with clear errors;
//! [`init_model`] writes a randomly initialised folder of the real architecture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::config::Qwen3VlConfig;
use super::processor::{self, ImageProcessorConfig, ProcessedImage};
use super::qwen3_vl::{ModelInput, Qwen3Vl};
use super::random::SplitMix;
use super::tokenizer::QwenTokenizer;
use super::weights;
use crate::data::files::read_json;

pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: Qwen3VlConfig,
    pub processor: ImageProcessorConfig,
    pub tokenizer: QwenTokenizer,
    pub model: Qwen3Vl,
    /// Tokens that end an answer: `<|im_end|>` plus any `eos_token_id` of
    /// `generation_config.json`.
    pub stop_tokens: Vec<u32>,
}

/// A prompt ready for the model, with the image it holds.
pub struct Prompt {
    pub input: ModelInput,
    pub image: Option<ProcessedImage>,
}

impl ModelFolder {
    /// Loads the folder; weights are converted to `dtype` (f32 or bf16).
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        Self::open_with(dir, |config| weights::load(config, dir, dtype, device))
    }

    /// Loads the folder, the weights through the [`VarBuilder`](candle_nn::VarBuilder) that
    /// `load_weights` makes for the checked config (see `super::quantized`).
    pub fn open_with(
        dir: &Path,
        load_weights: impl FnOnce(&Qwen3VlConfig) -> anyhow::Result<candle_nn::VarBuilder<'static>>,
    ) -> anyhow::Result<Self> {
        ensure!(
            dir.is_dir(),
            "model folder {} does not exist",
            dir.display()
        );
        let required = ["config.json", "tokenizer.json"];
        let mut missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        // transformers 5 saves a whole processor as processor_config.json instead.
        if !dir.join("preprocessor_config.json").is_file()
            && !dir.join("processor_config.json").is_file()
        {
            missing.push("preprocessor_config.json (or processor_config.json)");
        }
        if !dir.join("model.safetensors").is_file()
            && !dir.join("model.safetensors.index.json").is_file()
        {
            missing.push("model.safetensors (or model.safetensors.index.json)");
        }
        if !missing.is_empty() {
            bail!(
                "model folder {} lacks {}",
                dir.display(),
                missing.join(", ")
            );
        }
        let config = Qwen3VlConfig::from_file(&dir.join("config.json"))?;
        let processor = image_processor_config(dir)?;
        ensure!(
            processor.patch_size as usize == config.vision.patch_size
                && processor.merge_size as usize == config.vision.spatial_merge_size
                && processor.temporal_patch_size as usize == config.vision.temporal_patch_size,
            "preprocessor_config.json (patch {}, merge {}, temporal {}) does not match config.json \
             (patch {}, merge {}, temporal {})",
            processor.patch_size,
            processor.merge_size,
            processor.temporal_patch_size,
            config.vision.patch_size,
            config.vision.spatial_merge_size,
            config.vision.temporal_patch_size
        );
        let tokenizer = QwenTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let special = tokenizer.special();
        for (name, ours, theirs) in [
            ("<|image_pad|>", special.image_pad, config.image_token_id),
            (
                "<|vision_start|>",
                special.vision_start,
                config.vision_start_token_id,
            ),
            (
                "<|vision_end|>",
                special.vision_end,
                config.vision_end_token_id,
            ),
        ] {
            ensure!(
                ours == theirs,
                "tokenizer.json has {name} = {ours}, config.json says {theirs}"
            );
        }
        let mut stop_tokens = vec![special.im_end];
        let gen = dir.join("generation_config.json");
        if gen.is_file() {
            let v = read_json(&gen)?;
            let ids = match &v["eos_token_id"] {
                Value::Number(n) => n.as_u64().into_iter().collect(),
                Value::Array(a) => a.iter().filter_map(Value::as_u64).collect(),
                _ => Vec::new(),
            };
            for id in ids {
                if !stop_tokens.contains(&(id as u32)) {
                    stop_tokens.push(id as u32);
                }
            }
        }
        let vb = load_weights(&config)?;
        let model = Qwen3Vl::load(&config, vb)
            .with_context(|| format!("cannot build the model from {}", dir.display()))?;
        Ok(ModelFolder {
            dir: dir.to_path_buf(),
            config,
            processor,
            tokenizer,
            model,
            stop_tokens,
        })
    }

    /// The chat prompt for one question about `image` (or text alone).
    pub fn prompt(
        &self,
        image: Option<&image::RgbImage>,
        question: &str,
    ) -> anyhow::Result<Prompt> {
        let device = self.model.device();
        match image {
            Some(img) => {
                let processed = processor::process_image(img, &self.processor)?;
                let chat = self.tokenizer.chat(
                    question,
                    processed.image_tokens(self.processor.merge_size),
                    None,
                )?;
                let [t, h, w] = processed.grid_thw;
                let rows = (t * h * w) as usize;
                let pixels = Tensor::from_slice(
                    &processed.pixel_values,
                    (rows, self.processor.patch_dim()),
                    device,
                )?;
                Ok(Prompt {
                    input: ModelInput::single(chat.ids, Some(pixels), vec![processed.grid_thw]),
                    image: Some(processed),
                })
            }
            None => {
                let ids = self.tokenizer.chat_text(question)?;
                Ok(Prompt {
                    input: ModelInput::single(ids, None, Vec::new()),
                    image: None,
                })
            }
        }
    }
}

/// The image processor's settings: `preprocessor_config.json`, or the `image_processor` part of
/// the `processor_config.json` that transformers 5 writes.
fn image_processor_config(dir: &Path) -> anyhow::Result<ImageProcessorConfig> {
    let own = dir.join("preprocessor_config.json");
    if own.is_file() {
        return ImageProcessorConfig::from_file(&own);
    }
    let path = dir.join("processor_config.json");
    let v = read_json(&path)?;
    let image = v
        .get("image_processor")
        .with_context(|| format!("{} has no image_processor", path.display()))?;
    ImageProcessorConfig::from_json(image).with_context(|| format!("{}", path.display()))
}

/// The sizes `init-model` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitSize {
    /// About 10 million parameters (most in the embedding): tests and quick demos.
    Tiny,
    /// About 45 million parameters: demos of training that show a curve.
    Small,
    /// The Qwen3-VL-2B-Instruct architecture (2.1 billion parameters, 8.5 GB in f32).
    #[value(name = "2b")]
    Qwen2b,
}

/// The sizes that differ between the `init-model` configs.
struct InitSizes {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    mrope_section: [usize; 3],
    vision_depth: usize,
    vision_hidden: usize,
    vision_heads: usize,
    vision_intermediate: usize,
    deepstack: Vec<usize>,
}

/// The `config.json` of a size, in the Hub's published form.
pub fn init_config(size: InitSize) -> Value {
    let s = match size {
        InitSize::Tiny => InitSizes {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            intermediate: 128,
            mrope_section: [2, 3, 3],
            vision_depth: 2,
            vision_hidden: 32,
            vision_heads: 2,
            vision_intermediate: 64,
            deepstack: vec![0, 1],
        },
        InitSize::Small => InitSizes {
            hidden: 256,
            layers: 4,
            heads: 8,
            kv_heads: 4,
            head_dim: 32,
            intermediate: 768,
            mrope_section: [6, 5, 5],
            vision_depth: 4,
            vision_hidden: 128,
            vision_heads: 4,
            vision_intermediate: 512,
            deepstack: vec![1, 2, 3],
        },
        InitSize::Qwen2b => InitSizes {
            hidden: 2048,
            layers: 28,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 6144,
            mrope_section: [24, 20, 20],
            vision_depth: 24,
            vision_hidden: 1024,
            vision_heads: 16,
            vision_intermediate: 4096,
            deepstack: vec![5, 11, 17],
        },
    };
    let (h, layers, heads, kv, hd, inter, section) = (
        s.hidden,
        s.layers,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.intermediate,
        s.mrope_section,
    );
    let (vd, vh, vheads, vinter, deepstack) = (
        s.vision_depth,
        s.vision_hidden,
        s.vision_heads,
        s.vision_intermediate,
        s.deepstack,
    );
    json!({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "tie_word_embeddings": true,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": 151936,
            "hidden_size": h,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "head_dim": hd,
            "hidden_act": "silu",
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "attention_bias": false,
            "rope_theta": 5000000,
            "rope_scaling": {"rope_type": "default", "mrope_section": section, "mrope_interleaved": true},
            "tie_word_embeddings": true
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "depth": vd,
            "hidden_size": vh,
            "intermediate_size": vinter,
            "num_heads": vheads,
            "in_channels": 3,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "out_hidden_size": h,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": deepstack,
            "hidden_act": "gelu_pytorch_tanh"
        }
    })
}

/// Qwen3-VL's `preprocessor_config.json`.
pub fn preprocessor_json() -> Value {
    json!({
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_resize": true, "do_rescale": true, "do_normalize": true, "do_convert_rgb": true,
        "rescale_factor": 1.0 / 255.0,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "size": {"shortest_edge": 65536, "longest_edge": 16777216}
    })
}

/// The chat template of roiscope's prompt layout (`tokenizer::QwenTokenizer::chat`), for
/// transformers' `apply_chat_template`: written into model folders as `chat_template.jinja`.
pub const CHAT_TEMPLATE: &str = include_str!("chat_template.jinja");

/// The `tokenizer_config.json` of a model folder: the Qwen2 tokenizer class over the bundled
/// `tokenizer.json`, `<|im_end|>` ending a turn, `<|endoftext|>` for padding, no BOS.
pub fn tokenizer_config_json() -> Value {
    json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 262144,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "add_bos_token": false,
        "add_prefix_space": false,
        "errors": "replace",
        "clean_up_tokenization_spaces": false,
        "split_special_tokens": false
    })
}

/// Writes a randomly initialised model folder of `size` into `out` (which must not exist or be
/// empty): weights normal with std 0.02 as transformers initialises them, norms 1, biases 0.
/// The folder appears complete or not at all.
pub fn init_model(
    size: InitSize,
    out: &Path,
    dtype: DType,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Qwen3VlConfig> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .with_context(|| format!("cannot read {}", out.display()))?
                .next()
                .is_none();
        ensure!(
            empty,
            "{} already exists and is not an empty folder",
            out.display()
        );
    }
    let config_json = init_config(size);
    let config = Qwen3VlConfig::from_json(&config_json)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile_dir(parent, out)?;
    let result = (|| -> anyhow::Result<()> {
        let shapes = weights::expected_shapes(&config);
        let mut rng = SplitMix::new(seed);
        let mut tensors = HashMap::new();
        for (i, (name, shape)) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let is_norm = name.ends_with("norm.weight")
                || name.contains("norm1.")
                || name.contains("norm2.")
                || name.ends_with("_layernorm.weight");
            let values: Vec<f32> = if is_norm && name.ends_with(".weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| rng.normal() * 0.02).collect()
            };
            let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
            tensors.insert(name.clone(), t);
            progress(i + 1, shapes.len());
        }
        candle_core::safetensors::save(&tensors, staging.join("model.safetensors"))?;
        drop(tensors);
        let write_json = |name: &str, v: &Value| -> anyhow::Result<()> {
            std::fs::write(staging.join(name), serde_json::to_string_pretty(v)? + "\n")
                .with_context(|| format!("cannot write {name}"))
        };
        write_json("config.json", &config_json)?;
        write_json("preprocessor_config.json", &preprocessor_json())?;
        write_json(
            "generation_config.json",
            &json!({"eos_token_id": [151645, 151643], "pad_token_id": 151643}),
        )?;
        let tokenizer = super::tokenizer::bundled_json()?;
        std::fs::write(staging.join("tokenizer.json"), tokenizer)
            .context("cannot write tokenizer.json")?;
        write_json("tokenizer_config.json", &tokenizer_config_json())?;
        std::fs::write(staging.join("chat_template.jinja"), CHAT_TEMPLATE)
            .context("cannot write chat_template.jinja")?;
        if out.exists() {
            std::fs::remove_dir(out)
                .with_context(|| format!("cannot replace the empty folder {}", out.display()))?;
        }
        std::fs::rename(&staging, out)
            .with_context(|| format!("cannot move the model into {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.map(|()| config)
}

/// A fresh staging folder next to `out`.
fn tempfile_dir(parent: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    for i in 0..1000 {
        let p = parent.join(format!(".{name}.partial{i}"));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    bail!("cannot create a staging folder in {}", parent.display())
}
