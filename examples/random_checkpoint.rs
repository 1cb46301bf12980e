//! A checkpoint with random weights for a model folder, for benchmarks of locate -> diagnose ->
//! verify on a model too large to train here (the 2B): a LoRA adapter (the default targets, r 8,
//! `A` and `B` both random so that merging it changes the weights) and fresh heads, in the layout
//! the trainer writes (`adapter/` in peft's layout, `heads.safetensors`).
//!
//!     cargo run --release --example random_checkpoint -- MODEL_DIR OUT_DIR
//!
//! Only `config.json` of the model folder is read (the weights are never loaded).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use roiscope::model::config::Qwen3VlConfig;
use roiscope::model::weights::expected_shapes;
use roiscope::train::heads::{HeadsConfig, MatchHead, RoiHead, TaskWeights};
use roiscope::train::lora::{LoraConfig, LoraSet};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out] = &args[..] else {
        anyhow::bail!("usage: random_checkpoint MODEL_DIR OUT_DIR");
    };
    let (model, out) = (PathBuf::from(model), PathBuf::from(out));
    let config = Qwen3VlConfig::from_file(&model.join("config.json"))?;
    let dev = Device::Cpu;
    let lora = LoraConfig::default();
    let varmap = VarMap::new();
    let mut modules = Vec::new();
    let mut n = 0u64;
    for (name, shape) in expected_shapes(&config) {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if shape.len() != 2
            || !lora
                .targets
                .iter()
                .any(|t| module.ends_with(&format!(".{t}")))
        {
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        n += 1;
        let mut data = varmap.data().lock().expect("fresh varmap");
        let a = Tensor::randn(
            0f32,
            (1.0 / cols as f64).sqrt() as f32,
            (lora.r, cols),
            &dev,
        )?;
        let b = Tensor::randn(0f32, 0.01, (rows, lora.r), &dev)?;
        data.insert(
            format!("base_model.model.{module}.lora_A.weight"),
            Var::from_tensor(&a)?,
        );
        data.insert(
            format!("base_model.model.{module}.lora_B.weight"),
            Var::from_tensor(&b)?,
        );
        modules.push(module.to_string());
    }
    let set = LoraSet {
        config: lora,
        varmap,
        modules,
    };
    set.save_peft(&out.join("adapter"), &model.display().to_string())?;
    let heads = VarMap::new();
    let vb = VarBuilder::from_varmap(&heads, DType::F32, &dev);
    let hidden = config.text.hidden_size;
    let hc = HeadsConfig::default();
    RoiHead::load(vb.pp("roi"), hidden, &hc)?;
    MatchHead::load(vb.pp("match"), hidden, &hc)?;
    TaskWeights::load(vb.pp("task"))?;
    let tensors: HashMap<String, Tensor> = heads
        .data()
        .lock()
        .expect("heads varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, out.join("heads.safetensors"))
        .with_context(|| format!("cannot write into {}", out.display()))?;
    eprintln!("wrote {} ({n} adapted layers, random heads)", out.display());
    Ok(())
}
