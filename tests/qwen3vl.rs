//! Qwen3-VL in candle against Hugging Face transformers' `Qwen3VLForConditionalGeneration`, on
//! two tiny random configs (fixtures made by `tests/fixtures/make_qwen3vl_fixtures.py`): the
//! prompt ids and patches, the MRoPE positions, the last hidden states and the logits at every
//! real position (1e-4), and 24 greedily generated tokens; then `roiscope infer --json`.

#[path = "support/qwen3vl.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use roiscope::data::image_io::{load_rgb8, LoadOptions};
use roiscope::model::folder::ModelFolder;
use roiscope::model::generate::{generate, GenerationConfig, Sampling};
use roiscope::model::ops::Exec;
use roiscope::model::qwen3_vl::{ModelInput, Qwen3Vl};
use roiscope::model::text::KvCache;
use serde_json::Value;
use support::*;

const TOLERANCE: f32 = 1e-4;

fn image(name: &str) -> image::RgbImage {
    load_rgb8(
        &fixtures().join("images").join(name),
        LoadOptions::default(),
    )
    .unwrap()
}

/// The case's prompts built by roiscope, checked against the reference ids and patches.
fn build_input(folder: &ModelFolder, reference: &Reference, case: &str) -> ModelInput {
    let meta = reference.case(case);
    let texts: Vec<&str> = meta["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let images: Vec<&str> = meta["images"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap()).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let img = images.get(i).map(|n| image(n));
        let prompt = folder.prompt(img.as_ref(), text).unwrap();
        rows.push(prompt.input.input_ids[0].clone());
        if let Some(p) = prompt.input.pixel_values {
            pixels.push(p);
        }
        grids.extend(prompt.input.image_grid_thw);
    }
    let pixel_values = if pixels.is_empty() {
        None
    } else {
        Some(Tensor::cat(&pixels, 0).unwrap())
    };
    let input = if rows.len() == 1 {
        ModelInput::single(rows.pop().unwrap(), pixel_values, grids)
    } else {
        ModelInput::left_padded(
            rows,
            folder.tokenizer.special().endoftext,
            pixel_values,
            grids,
        )
    };
    assert_eq!(
        input.input_ids,
        reference.ids(&format!("{case}.input_ids")),
        "{case}: prompt ids"
    );
    let mask = reference.ids(&format!("{case}.attention_mask"));
    let valid: Vec<Vec<bool>> = mask
        .iter()
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    assert_eq!(input.valid, valid, "{case}: padding");
    if let Some(p) = &input.pixel_values {
        let want = reference.tensor(&format!("{case}.pixel_values"));
        assert_eq!(p.dims(), want.dims());
        assert!(max_abs_diff(p, want) <= 1e-5, "{case}: pixel values");
        let grid: Vec<Vec<u32>> = reference.ids(&format!("{case}.image_grid_thw"));
        let ours: Vec<Vec<u32>> = input.image_grid_thw.iter().map(|g| g.to_vec()).collect();
        assert_eq!(ours, grid, "{case}: image_grid_thw");
    }
    input
}

fn check_forward(
    model: &Qwen3Vl,
    input: &ModelInput,
    reference: &Reference,
    case: &str,
    exec: Exec,
) {
    let live = reference.live();
    let out = model.forward(input, exec).unwrap();
    let logits = model.logits(&out.hidden).unwrap();
    let want_hidden = reference.tensor(&format!("{case}.last_hidden"));
    let want_logits = reference.tensor(&format!("{case}.logits"));
    let live_index = Tensor::from_vec(live.clone(), live.len(), &Device::Cpu).unwrap();
    let vocab = model.config().text.vocab_size;
    let mut dead = vec![true; vocab];
    for &id in &live {
        dead[id as usize] = false;
    }
    let dead: Vec<u32> = (0..vocab as u32).filter(|&i| dead[i as usize]).collect();
    let dead_index = Tensor::from_vec(dead.clone(), dead.len(), &Device::Cpu).unwrap();
    let mut worst = (0f32, 0f32);
    for (row, valid) in input.valid.iter().enumerate() {
        for (pos, &v) in valid.iter().enumerate() {
            if !v {
                continue;
            }
            let h = out.hidden.i((row, pos)).unwrap();
            let dh = max_abs_diff(&h, &want_hidden.i((row, pos)).unwrap());
            let l = logits.i((row, pos)).unwrap();
            let dl = max_abs_diff(
                &l.index_select(&live_index, 0).unwrap(),
                &want_logits.i((row, pos)).unwrap(),
            );
            // The fixture's unused vocabulary rows are zero, so those logits are 0 in both.
            let zero = Tensor::zeros(dead.len(), DType::F32, &Device::Cpu).unwrap();
            let dd = max_abs_diff(&l.index_select(&dead_index, 0).unwrap(), &zero);
            assert!(
                dh <= TOLERANCE && dl <= TOLERANCE && dd <= TOLERANCE,
                "{case} {exec:?} row {row} position {pos}: hidden {dh}, logits {dl}, unused logits {dd}"
            );
            worst = (worst.0.max(dh), worst.1.max(dl));
        }
    }
    // The bound is met with room, and image positions are marked.
    eprintln!(
        "{case} {exec:?}: max |Δhidden| {:.2e}, max |Δlogit| {:.2e}",
        worst.0, worst.1
    );
    let marked: usize = out.image_mask.iter().flatten().filter(|&&m| m).count();
    let pads = input
        .input_ids
        .iter()
        .flatten()
        .filter(|&&t| t == model.config().image_token_id)
        .count();
    assert_eq!(marked, pads);
}

fn parity(name: &str) {
    let dir = model_dir(name);
    let folder = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let reference = Reference::load(name);
    for case in ["single", "batch", "text"] {
        let input = build_input(&folder, &reference, case);
        let positions = folder.model.positions(&input).unwrap();
        let want = reference
            .tensor(&format!("{case}.position_ids"))
            .to_vec3::<i64>()
            .unwrap();
        for (axis, rows) in positions.ids.iter().enumerate() {
            for (row, ids) in rows.iter().enumerate() {
                for (pos, &id) in ids.iter().enumerate() {
                    if input.valid[row][pos] {
                        assert_eq!(
                            id, want[axis][row][pos],
                            "{case} axis {axis} row {row} pos {pos}"
                        );
                    }
                }
            }
        }
        check_forward(&folder.model, &input, &reference, case, Exec::Fused);
        check_forward(
            &folder.model,
            &input,
            &reference,
            case,
            Exec::Differentiable,
        );
    }
    for case in ["single", "text"] {
        let input = build_input(&folder, &reference, case);
        let want: Vec<u32> = reference
            .tensor(&format!("{case}.generated"))
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect();
        let config = GenerationConfig {
            max_new_tokens: want.len(),
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
        };
        let mut cache = KvCache::new();
        let mut streamed = Vec::new();
        let got = generate(&folder.model, &input, &config, &mut cache, |t| {
            streamed.push(t);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(got.token_ids, want, "{name} {case}: greedy generation");
        assert_eq!(streamed, want);
        // The same cache serves the next prompt: it is reset, not appended to.
        let again = generate(&folder.model, &input, &config, &mut cache, |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            again.token_ids, want,
            "{name} {case}: second run on a used cache"
        );
    }
}

#[test]
fn config_a_matches_transformers() {
    parity("a");
}

#[test]
fn config_b_in_the_hub_form_matches_transformers() {
    parity("b");
}

/// With every weight a variable, one backward pass through the differentiable path reaches
/// every tensor of the model.
#[test]
fn gradients_reach_every_weight() {
    let name = "b";
    let dir = model_dir(name);
    let folder = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let reference = Reference::load(name);
    let input = build_input(&folder, &reference, "batch");
    let loaded =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &loaded {
            data.insert(name.clone(), Var::from_tensor(t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Qwen3Vl::load(&folder.config, vb).unwrap();
    let out = model.forward(&input, Exec::Differentiable).unwrap();
    let logits = model.logits(&out.hidden).unwrap();
    let weights = Tensor::randn(0f32, 1.0, logits.dims(), &Device::Cpu).unwrap();
    let loss = (logits * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut without = Vec::new();
    for (name, var) in data.iter() {
        let reached = grads
            .get(var.as_tensor())
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
            .unwrap_or(false);
        if !reached {
            without.push(name.clone());
        }
    }
    without.sort();
    assert!(data.len() > 50);
    assert!(without.is_empty(), "no gradient reached {without:?}");
}

fn roiscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roiscope"))
        .args(args)
        .output()
        .unwrap()
}

/// `roiscope infer --json` gives transformers' greedy tokens, up to the first end-of-answer
/// token (where infer stops).
#[test]
fn infer_command_gives_the_reference_tokens() {
    let name = "a";
    let dir = model_dir(name);
    let reference = Reference::load(name);
    let want: Vec<u32> = reference
        .tensor("single.generated")
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let folder = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let stop = want
        .iter()
        .position(|t| folder.stop_tokens.contains(t))
        .map_or(want.len(), |i| i + 1);
    let meta = reference.case("single");
    let img = fixtures()
        .join("images")
        .join(meta["images"][0].as_str().unwrap());
    let out = roiscope(&[
        "infer",
        "--model",
        dir.path().to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--prompt",
        meta["texts"][0].as_str().unwrap(),
        "--max-new-tokens",
        &want.len().to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want[..stop]);
    let grid: Vec<u64> = v["image_grid_thw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(grid.len(), 3);
    assert_eq!(
        v["prompt_tokens"].as_u64().unwrap() as usize,
        reference.ids("single.input_ids")[0].len()
    );
    assert!(v["text"].is_string() && v["seconds"].as_f64().unwrap() >= 0.0);
}

fn infer_error(model: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "infer",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Where?",
    ];
    args.extend_from_slice(extra);
    let out = roiscope(&args);
    assert!(!out.status.success(), "infer should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_model_folders_and_inputs_get_clear_errors() {
    let dir = model_dir("a");
    let path = dir.path();
    let wide = fixtures().join("images/wide.png");
    let wide = wide.to_str().unwrap();

    // A missing file is named.
    std::fs::rename(path.join("tokenizer.json"), path.join("t.json")).unwrap();
    let err = infer_error(path, &["--image", wide]);
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::rename(path.join("t.json"), path.join("tokenizer.json")).unwrap();

    // A tokenizer without the vision tokens.
    let full = std::fs::read(path.join("tokenizer.json")).unwrap();
    let mut tok: Value = serde_json::from_slice(&full).unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != "<|vision_start|>");
    std::fs::write(path.join("tokenizer.json"), tok.to_string()).unwrap();
    let err = infer_error(path, &["--image", wide]);
    assert!(err.contains("<|vision_start|>"), "{err}");
    std::fs::write(path.join("tokenizer.json"), &full).unwrap();

    // Another architecture.
    let config_text = std::fs::read_to_string(path.join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&config_text).unwrap();
    config["model_type"] = "llava".into();
    std::fs::write(path.join("config.json"), config.to_string()).unwrap();
    let err = infer_error(path, &["--image", wide]);
    assert!(err.contains("llava") && err.contains("qwen3_vl"), "{err}");

    // A prompt longer than the context.
    let mut config: Value = serde_json::from_str(&config_text).unwrap();
    config["text_config"]["max_position_embeddings"] = 8.into();
    std::fs::write(path.join("config.json"), config.to_string()).unwrap();
    let err = infer_error(path, &["--image", wide]);
    assert!(err.contains("context"), "{err}");
    std::fs::write(path.join("config.json"), &config_text).unwrap();

    // A tensor missing from the weights and one too many: both named.
    let weights =
        candle_core::safetensors::load(path.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut changed = weights.clone();
    changed.remove("model.language_model.norm.weight");
    changed.insert(
        "model.extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&changed, path.join("model.safetensors")).unwrap();
    let err = infer_error(path, &["--image", wide]);
    assert!(
        err.contains("model.language_model.norm.weight") && err.contains("model.extra.weight"),
        "{err}"
    );
    candle_core::safetensors::save(&weights, path.join("model.safetensors")).unwrap();

    // Images: extreme aspect ratio refused as transformers does; a missing file named.
    let images = tempfile::tempdir().unwrap();
    let thin = images.path().join("thin.png");
    image::RgbImage::new(402, 2).save(&thin).unwrap();
    let err = infer_error(path, &["--image", thin.to_str().unwrap()]);
    assert!(err.contains("aspect ratio"), "{err}");
    let err = infer_error(path, &["--image", "/nonexistent/x.png"]);
    assert!(err.contains("/nonexistent/x.png"), "{err}");
}

/// A 1x1 image is scaled up to the processor's minimum size and answered.
#[test]
fn a_one_pixel_image_is_answered() {
    let dir = model_dir("a");
    let images = tempfile::tempdir().unwrap();
    let dot = images.path().join("dot.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10]))
        .save(&dot)
        .unwrap();
    let out = roiscope(&[
        "infer",
        "--model",
        dir.path().to_str().unwrap(),
        "--image",
        dot.to_str().unwrap(),
        "--prompt",
        "What colour?",
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image_grid_thw"], serde_json::json!([1, 4, 4]));
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads to the same model.
#[test]
fn sharded_checkpoints_load() {
    let dir = model_dir("a");
    let path = dir.path();
    let all = candle_core::safetensors::load(path.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    for (i, name) in names.iter().enumerate() {
        let shard = i % 2;
        shards[shard].insert((*name).clone(), all[*name].clone());
        map.insert(
            (*name).clone(),
            Value::String(format!("model-0000{}-of-00002.safetensors", shard + 1)),
        );
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            shard,
            path.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    std::fs::remove_file(path.join("model.safetensors")).unwrap();
    std::fs::write(
        path.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let folder = ModelFolder::open(path, DType::F32, &Device::Cpu).unwrap();
    let reference = Reference::load("a");
    let input = build_input(&folder, &reference, "text");
    check_forward(&folder.model, &input, &reference, "text", Exec::Fused);
    // A shard that is listed but missing is named.
    std::fs::remove_file(path.join("model-00002-of-00002.safetensors")).unwrap();
    let err = ModelFolder::open(path, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}
