//! LoRA adapters on the model's linear layers, saved and loaded in PEFT's layout
//! (`adapter_config.json` + `adapter_model.safetensors` with PEFT's tensor names), so an adapter
//! trained here loads in Python's peft and the other way round.
//!
//! Modules are matched as PEFT matches `target_modules`: a module is adapted when its name is a
//! target or ends with `.` + a target (so the seed's `q_proj`, `v_proj`, `gate_proj` pick the
//! text model's layers; the vision tower names its layers differently).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde_json::{json, Value};

use crate::model::dropout::Dropout;
use crate::model::ops::Lora;
use crate::model::qwen3_vl::Qwen3Vl;
use crate::model::random::SplitMix;

/// Where LoRA goes and how strong it is.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// The seed's: r 8, alpha 32, dropout 0.05 on q_proj, v_proj, gate_proj.
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 32.0,
            dropout: 0.05,
            targets: vec!["q_proj".into(), "v_proj".into(), "gate_proj".into()],
        }
    }
}

/// The adapters attached to a model: their trainable variables under PEFT's names.
pub struct LoraSet {
    pub config: LoraConfig,
    /// `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`.
    pub varmap: VarMap,
    /// Adapted modules, in model order.
    pub modules: Vec<String>,
}

fn matches(module: &str, targets: &[String]) -> bool {
    targets
        .iter()
        .any(|t| module == t || module.ends_with(&format!(".{t}")))
}

fn peft_name(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.{which}.weight")
}

/// Attaches adapters with fresh weights: `A` uniform within `1 / sqrt(in)` (PEFT's Kaiming
/// default), `B` zero, so the model starts out unchanged.
pub fn attach(
    model: &mut Qwen3Vl,
    config: &LoraConfig,
    seed: u64,
    device: &Device,
) -> anyhow::Result<LoraSet> {
    let mut rng = SplitMix::new(seed);
    attach_with(model, config, |name, shape| {
        let n = shape.0 * shape.1;
        if name.ends_with("lora_A.weight") {
            let bound = 1.0 / (shape.1 as f64).sqrt();
            let v: Vec<f32> = (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Ok(Tensor::from_vec(v, shape, device)?)
        } else {
            Ok(Tensor::zeros(shape, DType::F32, device)?)
        }
    })
}

fn attach_with(
    model: &mut Qwen3Vl,
    config: &LoraConfig,
    mut init: impl FnMut(&str, (usize, usize)) -> anyhow::Result<Tensor>,
) -> anyhow::Result<LoraSet> {
    ensure!(config.r > 0, "LoRA rank r must be at least 1");
    ensure!(
        (0.0..1.0).contains(&config.dropout),
        "LoRA dropout must be in [0, 1)"
    );
    let varmap = VarMap::new();
    let mut modules = Vec::new();
    for (module, linear) in model.linears_mut() {
        if !matches(&module, &config.targets) {
            continue;
        }
        let (out, inp) = linear.shape();
        let a_name = peft_name(&module, "lora_A");
        let b_name = peft_name(&module, "lora_B");
        let a = Var::from_tensor(&init(&a_name, (config.r, inp))?)?;
        let b = Var::from_tensor(&init(&b_name, (out, config.r))?)?;
        ensure!(
            a.dims() == [config.r, inp] && b.dims() == [out, config.r],
            "adapter of {module} has the wrong shape"
        );
        linear.lora = Some(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: config.alpha / config.r as f64,
            dropout: config.dropout,
            masks: None,
            // Sites in model order, as the adapters are called in one forward pass.
            site: modules.len() as u64,
        });
        let mut data = varmap.data().lock().expect("fresh varmap");
        data.insert(a_name, a);
        data.insert(b_name, b);
        modules.push(module);
    }
    if modules.is_empty() {
        bail!(
            "no linear layer matches the LoRA targets {:?}",
            config.targets
        );
    }
    Ok(LoraSet {
        config: config.clone(),
        varmap,
        modules,
    })
}

/// Connects every adapter to `masks` (training: dropout follows its plan) or to nothing.
pub fn set_dropout(model: &mut Qwen3Vl, masks: Option<Arc<Dropout>>) {
    for (_, linear) in model.linears_mut() {
        if let Some(lora) = &mut linear.lora {
            lora.masks = masks.clone();
        }
    }
}

/// Removes every adapter.
pub fn detach(model: &mut Qwen3Vl) {
    for (_, linear) in model.linears_mut() {
        linear.lora = None;
    }
}

impl LoraSet {
    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`, each atomically.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tensors: HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let target = dir.join("adapter_model.safetensors");
        let partial = crate::data::files::partial_path(&target);
        candle_core::safetensors::save(&tensors, &partial)?;
        std::fs::rename(&partial, &target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        let c = &self.config;
        // What peft itself writes for Qwen3-VL: no task type (transformers has no causal-LM
        // auto class for it) and the class to load, so `AutoPeftModel.from_pretrained` works;
        // the base model as an absolute path, so it loads from any working folder.
        let base_model = std::fs::canonicalize(base_model)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .unwrap_or_else(|| base_model.to_string());
        let config = json!({
            "peft_type": "LORA",
            "auto_mapping": {
                "base_model_class": "Qwen3VLForConditionalGeneration",
                "parent_library": "transformers.models.qwen3_vl.modeling_qwen3_vl",
            },
            "base_model_name_or_path": base_model,
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": c.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
            "task_type": null,
        });
        crate::data::files::write_atomic(
            &dir.join("adapter_config.json"),
            (serde_json::to_string_pretty(&config)? + "\n").as_bytes(),
        )
    }
}

/// Reads a PEFT adapter folder and attaches it, strictly: a variant roiscope does not implement
/// (DoRA, rsLoRA, per-layer ranks, bias training) is refused, and a missing or unexpected tensor is
/// named.
pub fn load_peft(model: &mut Qwen3Vl, dir: &Path, device: &Device) -> anyhow::Result<LoraSet> {
    let cfg_path = dir.join("adapter_config.json");
    let v = crate::data::files::read_json(&cfg_path)?;
    let what = cfg_path.display();
    ensure!(
        v["peft_type"] == "LORA",
        "{what}: peft_type is {}, not LORA",
        v["peft_type"]
    );
    for (key, ok) in [
        ("use_dora", Value::Bool(false)),
        ("use_rslora", Value::Bool(false)),
        ("fan_in_fan_out", Value::Bool(false)),
    ] {
        if let Some(x) = v.get(key) {
            ensure!(
                x.is_null() || *x == ok,
                "{what}: {key} = {x} is not supported"
            );
        }
    }
    for key in ["layers_to_transform", "exclude_modules", "modules_to_save"] {
        if let Some(x) = v.get(key) {
            ensure!(x.is_null(), "{what}: {key} is not supported");
        }
    }
    if let Some(x) = v.get("lora_bias") {
        ensure!(
            x.is_null() || *x == Value::Bool(false),
            "{what}: lora_bias is not supported"
        );
    }
    if let Some(b) = v.get("bias") {
        ensure!(b == "none", "{what}: bias {b} is not supported (none)");
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if let Some(p) = v.get(key).and_then(Value::as_object) {
            ensure!(p.is_empty(), "{what}: {key} is not supported");
        }
    }
    let targets: Vec<String> = match &v["target_modules"] {
        Value::Array(a) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .with_context(|| format!("{what}: target_modules must be names"))?,
        Value::String(s) => {
            bail!("{what}: target_modules as a regular expression ({s:?}) is not supported")
        }
        _ => bail!("{what}: no target_modules"),
    };
    let config = LoraConfig {
        r: v["r"].as_u64().with_context(|| format!("{what}: no r"))? as usize,
        alpha: v["lora_alpha"]
            .as_f64()
            .with_context(|| format!("{what}: no lora_alpha"))?,
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        targets,
    };
    let weights = dir.join("adapter_model.safetensors");
    let mut found = candle_core::safetensors::load(&weights, device)
        .with_context(|| format!("cannot read {}", weights.display()))?;
    let mut missing = Vec::new();
    let set = attach_with(model, &config, |name, shape| match found.remove(name) {
        Some(t) => {
            ensure!(
                t.dims() == [shape.0, shape.1],
                "{name} is {:?}, the model needs {shape:?}",
                t.dims()
            );
            Ok(t.to_dtype(DType::F32)?)
        }
        None => {
            missing.push(name.to_string());
            Ok(Tensor::zeros(shape, DType::F32, device)?)
        }
    });
    let set = match set {
        Ok(set) => set,
        Err(e) => {
            detach(model);
            return Err(e);
        }
    };
    let unexpected: BTreeMap<_, _> = found.into_iter().collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        detach(model);
        bail!(
            "{}: {} missing ({}), {} unexpected ({})",
            weights.display(),
            missing.len(),
            missing
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            unexpected.len(),
            unexpected
                .keys()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(set)
}
