//! Qwen3-VL's architecture, read from a Hugging Face `config.json`.
//!
//! Every size comes from the file; nothing is assumed. Two forms of the text model's rotary
//! settings exist: the Hub's published one (`rope_theta` plus `rope_scaling` holding
//! `mrope_section`) and transformers 5's `rope_parameters`; both are read.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

/// The activation functions the architecture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
    /// Exact GELU (`gelu`).
    GeluErf,
}

impl Activation {
    fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => bail!("activation {other:?} is not supported (silu, gelu, gelu_pytorch_tanh)"),
        })
    }

    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Rotary frequencies given to time, height and width; they sum to `head_dim / 2` and are
    /// interleaved (t, h, w, t, h, w, ...) as transformers does for Qwen3-VL.
    pub mrope_section: [usize; 3],
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub out_hidden_size: usize,
    pub num_position_embeddings: usize,
    pub deepstack_visual_indexes: Vec<usize>,
    pub hidden_act: Activation,
    pub rope_theta: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Side of the square grid of learned position embeddings.
    pub fn position_grid_side(&self) -> usize {
        (self.num_position_embeddings as f64).sqrt().round() as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3VlConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub tie_word_embeddings: bool,
}

/// Reads numbers from one JSON object and names the missing key in the error.
struct Fields<'a> {
    obj: &'a Value,
    what: &'a str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> anyhow::Result<&Value> {
        match self.obj.get(key) {
            Some(v) if !v.is_null() => Ok(v),
            _ => bail!("{} has no {key:?}", self.what),
        }
    }

    fn usize(&self, key: &str) -> anyhow::Result<usize> {
        self.get(key)?
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("{}.{key} is not a whole number", self.what))
    }

    fn usize_or(&self, key: &str, default: usize) -> anyhow::Result<usize> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    fn f64(&self, key: &str) -> anyhow::Result<f64> {
        self.get(key)?
            .as_f64()
            .with_context(|| format!("{}.{key} is not a number", self.what))
    }

    fn str(&self, key: &str) -> anyhow::Result<&str> {
        self.get(key)?
            .as_str()
            .with_context(|| format!("{}.{key} is not a string", self.what))
    }

    fn usizes(&self, key: &str) -> anyhow::Result<Vec<usize>> {
        self.get(key)?
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
            .with_context(|| format!("{}.{key} is not a list of whole numbers", self.what))
    }
}

impl Qwen3VlConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let v = crate::data::files::read_json(path)?;
        Self::from_json(&v).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(v: &Value) -> anyhow::Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = v
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if model_type != "qwen3_vl" {
            bail!(
                "model_type is {model_type:?} (architectures {archs:?}); roiscope runs Qwen3-VL \
                 (model_type \"qwen3_vl\")"
            );
        }
        let top = Fields {
            obj: v,
            what: "config",
        };
        let t = Fields {
            obj: top.get("text_config")?,
            what: "text_config",
        };
        let vis = Fields {
            obj: top.get("vision_config")?,
            what: "vision_config",
        };

        let (rope_theta, mrope) = text_rope(t.obj)?;
        let hidden_size = t.usize("hidden_size")?;
        let num_attention_heads = t.usize("num_attention_heads")?;
        let head_dim = t.usize_or("head_dim", hidden_size / num_attention_heads.max(1))?;
        let text = TextConfig {
            vocab_size: t.usize("vocab_size")?,
            hidden_size,
            intermediate_size: t.usize("intermediate_size")?,
            num_hidden_layers: t.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: t.usize_or("num_key_value_heads", num_attention_heads)?,
            head_dim,
            hidden_act: Activation::parse(t.str("hidden_act")?)?,
            rms_norm_eps: t.f64("rms_norm_eps")?,
            rope_theta,
            mrope_section: mrope,
            attention_bias: t
                .obj
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_position_embeddings: t.usize("max_position_embeddings")?,
        };
        let vision_rope_theta = vis
            .obj
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| vis.obj.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let vision = VisionConfig {
            depth: vis.usize("depth")?,
            hidden_size: vis.usize("hidden_size")?,
            intermediate_size: vis.usize("intermediate_size")?,
            num_heads: vis.usize("num_heads")?,
            in_channels: vis.usize_or("in_channels", 3)?,
            patch_size: vis.usize("patch_size")?,
            temporal_patch_size: vis.usize("temporal_patch_size")?,
            spatial_merge_size: vis.usize("spatial_merge_size")?,
            out_hidden_size: vis.usize("out_hidden_size")?,
            num_position_embeddings: vis.usize("num_position_embeddings")?,
            deepstack_visual_indexes: vis.usizes("deepstack_visual_indexes")?,
            hidden_act: Activation::parse(vis.str("hidden_act")?)?,
            rope_theta: vision_rope_theta,
        };
        let id = |key: &str| -> anyhow::Result<u32> { Ok(top.usize(key)? as u32) };
        // The Hub's files say it at the top level, some also inside text_config.
        let tie_word_embeddings = v
            .get("tie_word_embeddings")
            .or_else(|| t.obj.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let config = Qwen3VlConfig {
            text,
            vision,
            image_token_id: id("image_token_id")?,
            video_token_id: id("video_token_id")?,
            vision_start_token_id: id("vision_start_token_id")?,
            vision_end_token_id: id("vision_end_token_id")?,
            tie_word_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the sizes fit together, so that a bad file fails here and not deep in a matmul.
    fn validate(&self) -> anyhow::Result<()> {
        let t = &self.text;
        let v = &self.vision;
        let nonzero = [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
            ("vision_config.depth", v.depth),
            ("vision_config.num_heads", v.num_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
            ("vision_config.temporal_patch_size", v.temporal_patch_size),
        ];
        for (name, value) in nonzero {
            if value == 0 {
                bail!("{name} is 0");
            }
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            bail!(
                "text_config: {} attention heads cannot share {} key/value heads",
                t.num_attention_heads,
                t.num_key_value_heads
            );
        }
        if !t.head_dim.is_multiple_of(2) || t.mrope_section.iter().sum::<usize>() != t.head_dim / 2
        {
            bail!(
                "text_config: mrope_section {:?} must sum to head_dim / 2 = {}",
                t.mrope_section,
                t.head_dim / 2
            );
        }
        if !v.hidden_size.is_multiple_of(v.num_heads) || !v.head_dim().is_multiple_of(4) {
            bail!(
                "vision_config: hidden_size {} over {} heads must give a head size divisible by 4",
                v.hidden_size,
                v.num_heads
            );
        }
        let side = v.position_grid_side();
        if side * side != v.num_position_embeddings {
            bail!(
                "vision_config.num_position_embeddings {} is not a square",
                v.num_position_embeddings
            );
        }
        if v.out_hidden_size != t.hidden_size {
            bail!(
                "vision_config.out_hidden_size {} differs from text_config.hidden_size {}",
                v.out_hidden_size,
                t.hidden_size
            );
        }
        if let Some(&i) = v.deepstack_visual_indexes.iter().find(|&&i| i >= v.depth) {
            bail!(
                "vision_config.deepstack_visual_indexes has {i}, the tower has {} layers",
                v.depth
            );
        }
        if v.deepstack_visual_indexes.len() > t.num_hidden_layers {
            bail!("more DeepStack layers than text layers");
        }
        for id in [
            self.image_token_id,
            self.video_token_id,
            self.vision_start_token_id,
            self.vision_end_token_id,
        ] {
            if id as usize >= t.vocab_size {
                bail!(
                    "special token id {id} is outside the vocabulary of {}",
                    t.vocab_size
                );
            }
        }
        Ok(())
    }

    /// The number of parameters, for reports.
    pub fn parameter_count(&self) -> usize {
        crate::model::weights::expected_shapes(self)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// `(rope_theta, mrope_section)` from either form of the text config.
fn text_rope(t: &Value) -> anyhow::Result<(f64, [usize; 3])> {
    let params = t
        .get("rope_parameters")
        .filter(|p| p.is_object())
        .or_else(|| t.get("rope_scaling").filter(|p| p.is_object()));
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| t.get("rope_theta"))
        .and_then(Value::as_f64)
        .context("text_config has no rope_theta (neither at its top nor in rope_parameters)")?;
    let section = params
        .and_then(|p| p.get("mrope_section"))
        .context("text_config has no mrope_section (in rope_scaling or rope_parameters)")?;
    let section: Vec<usize> = section
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
        .context("mrope_section is not a list of whole numbers")?;
    let rope_type = params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" && rope_type != "mrope" {
        bail!("rope_type {rope_type:?} is not supported (default)");
    }
    match section[..] {
        [a, b, c] => Ok((theta, [a, b, c])),
        _ => bail!(
            "mrope_section must have 3 entries (time, height, width), has {}",
            section.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_2b() -> Value {
        // The published Qwen3-VL-2B-Instruct config.json, abridged to the keys that are read.
        serde_json::json!({
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "image_token_id": 151655, "video_token_id": 151656,
            "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "model_type": "qwen3_vl", "tie_word_embeddings": true,
            "text_config": {
                "attention_bias": false, "head_dim": 128, "hidden_act": "silu",
                "hidden_size": 2048, "intermediate_size": 6144,
                "max_position_embeddings": 262144, "num_attention_heads": 16,
                "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
                "rope_scaling": {"mrope_interleaved": true, "mrope_section": [24, 20, 20],
                                 "rope_type": "default"},
                "rope_theta": 5000000, "vocab_size": 151936
            },
            "vision_config": {
                "deepstack_visual_indexes": [5, 11, 17], "depth": 24,
                "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1024, "in_channels": 3,
                "intermediate_size": 4096, "num_heads": 16, "num_position_embeddings": 2304,
                "out_hidden_size": 2048, "patch_size": 16, "spatial_merge_size": 2,
                "temporal_patch_size": 2
            }
        })
    }

    #[test]
    fn reads_the_hub_form_and_the_transformers_5_form_alike() {
        let hub = Qwen3VlConfig::from_json(&hub_2b()).unwrap();
        assert_eq!(hub.text.mrope_section, [24, 20, 20]);
        assert_eq!(hub.text.rope_theta, 5e6);
        assert!(hub.tie_word_embeddings);
        assert_eq!(hub.vision.position_grid_side(), 48);
        let mut v5 = hub_2b();
        let t = v5["text_config"].as_object_mut().unwrap();
        t.remove("rope_scaling");
        t.remove("rope_theta");
        t.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 5000000.0,
                               "mrope_section": [24, 20, 20], "mrope_interleaved": true}),
        );
        assert_eq!(Qwen3VlConfig::from_json(&v5).unwrap(), hub);
        // 2B: about 2.1 billion parameters with the embedding tied.
        let n = hub.parameter_count();
        assert!((2_000_000_000..2_300_000_000).contains(&n), "{n}");
    }

    #[test]
    fn bad_configs_are_named() {
        let mut other = hub_2b();
        other["model_type"] = "llama".into();
        let e = Qwen3VlConfig::from_json(&other).unwrap_err().to_string();
        assert!(e.contains("llama"), "{e}");
        let mut missing = hub_2b();
        missing["text_config"]
            .as_object_mut()
            .unwrap()
            .remove("hidden_size");
        let e = format!("{:#}", Qwen3VlConfig::from_json(&missing).unwrap_err());
        assert!(e.contains("hidden_size"), "{e}");
        let mut bad_section = hub_2b();
        bad_section["text_config"]["rope_scaling"]["mrope_section"] = serde_json::json!([24, 20]);
        assert!(Qwen3VlConfig::from_json(&bad_section).is_err());
        let mut bad_heads = hub_2b();
        bad_heads["text_config"]["num_key_value_heads"] = 5.into();
        assert!(Qwen3VlConfig::from_json(&bad_heads).is_err());
    }
}
