//! The image processor against Hugging Face's `Qwen2VLImageProcessorPil` (fixtures made by
//! `tests/fixtures/make_processor_fixtures.py`): the same resized pixels, grid and patch values.

use std::path::{Path, PathBuf};

use roiscope::data::image_io::{load_rgb8, LoadOptions};
use roiscope::model::processor::{process_image, smart_resize, ImageProcessorConfig};
use roiscope::model::resample::resize_bicubic;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/processor")
}

fn reference() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    map.into_values().collect()
}

fn config(setting: &str) -> ImageProcessorConfig {
    ImageProcessorConfig::from_file(&fixtures().join(format!("preprocessor_{setting}.json")))
        .unwrap()
}

#[test]
fn resized_pixels_match_pillow_bit_for_bit() {
    let cases = reference();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let img = load_rgb8(
            &root().join(case["image"].as_str().unwrap()),
            LoadOptions::default(),
        )
        .unwrap();
        let [w, h] = [0, 1].map(|i| case["resized"][i].as_u64().unwrap() as u32);
        let resized = resize_bicubic(&img, w, h);
        let digest: String = Sha256::digest(resized.as_raw())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            case["resized_sha256"],
            "{case}",
            case = case["image"]
        );
    }
}

#[test]
fn grid_and_patch_values_match_the_reference() {
    for case in reference() {
        let name = format!("{} {}", case["setting"], case["image"]);
        let cfg = config(case["setting"].as_str().unwrap());
        let img = load_rgb8(
            &root().join(case["image"].as_str().unwrap()),
            LoadOptions::default(),
        )
        .unwrap();
        let out = process_image(&img, &cfg).unwrap();
        let grid: Vec<u64> = out.grid_thw.iter().map(|&v| u64::from(v)).collect();
        assert_eq!(Value::from(grid), case["grid_thw"], "{name}");
        let shape = [
            case["shape"][0].as_u64().unwrap(),
            case["shape"][1].as_u64().unwrap(),
        ];
        assert_eq!(out.pixel_values.len() as u64, shape[0] * shape[1], "{name}");
        assert_eq!(cfg.patch_dim() as u64, shape[1], "{name}");
        for s in case["samples"].as_array().unwrap() {
            let (i, v) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
            assert!(
                (f64::from(out.pixel_values[i]) - v).abs() < 1e-6,
                "{name}: value {i} is {} not {v}",
                out.pixel_values[i]
            );
        }
        let sum: f64 = out.pixel_values.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = out.pixel_values.iter().map(|&v| f64::from(v).powi(2)).sum();
        let n = out.pixel_values.len() as f64;
        assert!(
            (sum - case["sum"].as_f64().unwrap()).abs() < 1e-4 * n,
            "{name}"
        );
        assert!(
            (sum_sq - case["sum_sq"].as_f64().unwrap()).abs() < 1e-4 * n,
            "{name}"
        );
        // One <|image_pad|> per merged patch.
        assert_eq!(
            out.image_tokens(cfg.merge_size) as u64,
            shape[0] / 4,
            "{name}"
        );
    }
}

#[test]
fn configs_are_read_strictly() {
    let qwen3 = config("qwen3");
    assert_eq!(qwen3, ImageProcessorConfig::qwen3_vl());
    let bad = |text: &str| ImageProcessorConfig::from_json(&serde_json::from_str(text).unwrap());
    let err = bad(
        r#"{"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("shortest_edge"), "{err}");
    let err = bad(
        r#"{"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "min_pixels": 1, "max_pixels": 2}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("image_mean"), "{err}");
    assert!(ImageProcessorConfig::from_file(Path::new("/nonexistent.json")).is_err());
    // The extreme-aspect refusal of the reference.
    assert!(smart_resize(4, 1000, 32, 0, 1 << 24).is_err());
}
