//! Shared helpers for the tests on the tiny Qwen3-VL fixtures (`tests/fixtures/qwen3vl`, made by
//! `tests/fixtures/make_qwen3vl_fixtures.py`): model folders and the reference outputs.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3vl")
}

/// A model folder for fixture `name` in a temporary directory: the committed files, the
/// gunzipped weights and the bundled tokenizer.
pub fn model_dir(name: &str) -> tempfile::TempDir {
    let src = fixtures().join(name);
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        if src.join(file).is_file() {
            std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
        }
    }
    let gz = std::fs::read(src.join("model.safetensors.gz")).unwrap();
    let mut weights = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut weights)
        .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        roiscope::model::tokenizer::bundled_json().unwrap(),
    )
    .unwrap();
    dir
}

pub struct Reference {
    pub json: Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = fixtures().join(name);
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        Reference { json, tensors }
    }

    pub fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference has no {key}"))
    }

    pub fn ids(&self, key: &str) -> Vec<Vec<u32>> {
        self.tensor(key)
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|v| v as u32).collect())
            .collect()
    }

    pub fn live(&self) -> Vec<u32> {
        self.json["live_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    pub fn case(&self, case: &str) -> &Value {
        &self.json["cases"][case]
    }
}

/// Largest absolute difference, computed in f64 (so f64 tensors keep their precision).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let f64 = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    (f64(a) - f64(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap() as f32
}

/// Largest difference relative to the reference's largest magnitude; a reference that is about
/// zero everywhere (a gradient that vanishes in exact arithmetic) is compared against 1e-3, so
/// its tolerance becomes about 1e-6 absolute.
pub fn relative_diff(ours: &Tensor, want: &Tensor) -> f32 {
    let largest: f32 = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    max_abs_diff(ours, want) / largest.max(1e-3)
}
