//! LoRA against Hugging Face peft (`tests/fixtures/make_lora_fixtures.py`): peft's adapter folder
//! loads strictly, gives peft's logits, and the gradients of every adapter tensor match; an adapter
//! saved by roiscope has peft's layout and reloads to the same outputs.

#[path = "support/qwen3vl.rs"]
mod support;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use roiscope::model::folder::ModelFolder;
use roiscope::model::ops::Exec;
use roiscope::model::qwen3_vl::ModelInput;
use roiscope::train::lora::{self, LoraConfig};
use support::*;

fn lora_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

/// The `single` case of model `a`, built from the reference tensors.
fn single_input(reference: &Reference) -> ModelInput {
    let ids = reference.ids("single.input_ids").remove(0);
    let grid: Vec<u32> = reference.ids("single.image_grid_thw").remove(0);
    ModelInput::single(
        ids,
        Some(reference.tensor("single.pixel_values").clone()),
        vec![[grid[0], grid[1], grid[2]]],
    )
}

fn live_logits(folder: &ModelFolder, input: &ModelInput, live: &[u32], exec: Exec) -> Tensor {
    let out = folder.model.forward(input, exec).unwrap();
    let index = Tensor::from_vec(live.to_vec(), live.len(), &Device::Cpu).unwrap();
    folder
        .model
        .logits(&out.hidden)
        .unwrap()
        .index_select(&index, 2)
        .unwrap()
}

#[test]
fn peft_adapters_give_peft_outputs_and_gradients() {
    let dir = model_dir("a");
    let mut folder = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let reference = Reference::load("a");
    let live = reference.live();
    let input = single_input(&reference);
    let peft =
        candle_core::safetensors::load(lora_fixtures().join("reference.safetensors"), &Device::Cpu)
            .unwrap();

    let set = lora::load_peft(
        &mut folder.model,
        &lora_fixtures().join("adapter"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        set.modules.len(),
        9,
        "3 text layers x (q_proj, v_proj, gate_proj)"
    );
    assert!(set
        .modules
        .iter()
        .all(|m| m.starts_with("model.language_model.layers.")));
    let logits = live_logits(&folder, &input, &live, Exec::Differentiable);
    let diff = max_abs_diff(&logits, &peft["logits"]);
    assert!(diff <= 1e-4, "logits with the adapter differ by {diff}");
    // The adapter changes the model: without it the logits are transformers' plain ones.
    assert!(max_abs_diff(&logits, reference.tensor("single.logits")) > 1e-2);

    let loss = (logits * &peft["probe"]).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = set.varmap.data().lock().unwrap();
    assert_eq!(vars.len(), 18);
    for (name, var) in vars.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let rel = relative_diff(g, &peft[&format!("grad.{name}")]);
        assert!(rel < 1e-3, "{name}: relative gradient difference {rel}");
    }
    // The fused path gives the same logits.
    let fused = live_logits(&folder, &input, &live, Exec::Fused);
    assert!(max_abs_diff(&fused, &peft["logits"]) <= 1e-4);
}

#[test]
fn saved_adapters_have_peft_layout_and_reload() {
    let dir = model_dir("a");
    let mut folder = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let reference = Reference::load("a");
    let live = reference.live();
    let input = single_input(&reference);

    // Fresh adapters leave the model unchanged (B starts at zero).
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let set = lora::attach(&mut folder.model, &config, 1, &Device::Cpu).unwrap();
    let before = live_logits(&folder, &input, &live, Exec::Fused);
    assert!(max_abs_diff(&before, reference.tensor("single.logits")) <= 1e-4);

    // Give B values, save, reload into a fresh model: same outputs, same names as peft writes.
    for (name, var) in set.varmap.data().lock().unwrap().iter() {
        if name.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let changed = live_logits(&folder, &input, &live, Exec::Fused);
    assert!(max_abs_diff(&changed, &before) > 1e-2);
    let out = tempfile::tempdir().unwrap();
    set.save_peft(out.path(), "tiny").unwrap();
    let ours =
        candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let theirs = candle_core::safetensors::load(
        lora_fixtures().join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut a: Vec<_> = ours
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let mut b: Vec<_> = theirs
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "tensor names and shapes as peft saves them");

    let mut fresh = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    lora::load_peft(&mut fresh.model, out.path(), &Device::Cpu).unwrap();
    let reloaded = live_logits(&fresh, &input, &live, Exec::Fused);
    assert!(max_abs_diff(&reloaded, &changed) <= 1e-6);
}

#[test]
fn bad_adapters_are_refused_by_name() {
    let dir = model_dir("a");
    let mut folder = ModelFolder::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let adapter = tempfile::tempdir().unwrap();
    let src = lora_fixtures().join("adapter");
    std::fs::copy(
        src.join("adapter_config.json"),
        adapter.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let gone = "base_model.model.model.language_model.layers.1.self_attn.v_proj.lora_A.weight";
    tensors.remove(gone);
    tensors.insert(
        "base_model.model.model.language_model.layers.9.self_attn.v_proj.lora_A.weight".into(),
        Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, adapter.path().join("adapter_model.safetensors"))
        .unwrap();
    let err = lora::load_peft(&mut folder.model, adapter.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(gone) && err.contains("layers.9"), "{err}");
    // A refused adapter leaves nothing attached.
    assert!(folder
        .model
        .linears_mut()
        .iter()
        .all(|(_, l)| l.lora.is_none()));

    let config = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true,
                                "target_modules": ["q_proj"]});
    std::fs::write(
        adapter.path().join("adapter_config.json"),
        config.to_string(),
    )
    .unwrap();
    let err = lora::load_peft(&mut folder.model, adapter.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use_dora"), "{err}");
}
