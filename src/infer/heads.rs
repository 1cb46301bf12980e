//! The task heads of a checkpoint, loaded strictly: every tensor the heads need must be in the
//! file with the right shape, and nothing else may be (a misspelt or foreign file is an error
//! that names the tensors, never a silently random head; DESIGN 4.9).
//!
//! Two layouts are accepted:
//! - roiscope's `heads.safetensors` (`roi.pool.*`, `roi.fc1/fc2.*`, `match.pool.*`,
//!   `match.fc1/fc2.*`, `task.log_vars`), as the trainer writes it;
//! - the seed's `Qwen3VLMultiTask` state dict saved as safetensors (without the base model):
//!   `spatial_pooler.attn.{0,2}.*`, `task_heads.roi_head.{0,3}.*`,
//!   `task_heads.match_head.{0,2}.*`, `loss_log_vars`. See [`from_seed`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::train::heads::{
    HeadsConfig, MatchHead, RoiHead, TaskWeights, KEY_DIM, POSITION_FEATURES, TEXT_POOLS,
};

/// The ROI and match heads, ready for inference (no dropout).
pub struct Heads {
    pub roi: RoiHead,
    pub matcher: MatchHead,
    /// `(roi, match, lm)` learned log-variances, for the record.
    pub log_vars: [f32; 3],
    pub config: HeadsConfig,
    /// Which layout the file had.
    pub layout: HeadsLayout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadsLayout {
    Roiscope,
    Seed,
}

/// Whether a state dict is the seed's `Qwen3VLMultiTask` layout.
pub fn is_seed_layout(tensors: &HashMap<String, Tensor>) -> bool {
    tensors
        .keys()
        .any(|k| k.starts_with("spatial_pooler.") || k.starts_with("task_heads."))
}

/// Maps the seed's head tensors onto roiscope's names.
///
/// - The seed has one attention pooling shared by both heads; roiscope gives each head its own,
///   so it is copied to `roi.pool` and `match.pool`.
/// - The pooling's last bias (`spatial_pooler.attn.2.bias`) is dropped: the softmax over the
///   sequence ignores a shift of every score, so the pooled state is exactly the same.
/// - `task_heads.roi_head.3` (after ReLU and Dropout) becomes `roi.fc2`, `match_head.2` becomes
///   `match.fc2`; `loss_log_vars` keeps its order (roi, match, lm), which is roiscope's.
///
/// What does not carry over exactly (see the README): the seed's ROI head emits raw
/// coordinates that are clipped afterwards and pools over the whole sequence, while roiscope's
/// pools over the image tokens and reads the box off where that pooling looks, its layers only
/// moving and scaling it (`train::heads::RoiHead::locate_with_focus`); the
/// imported ROI weights are a starting point for fine-tuning, not the seed's boxes. The match
/// head scores the same pooled state through the same layers, so its logits are the seed's on
/// the same token sequence. The seed's heads have no locus input (`train::heads`): its weights
/// (and the match head's text and image projections, text poolings, query and key) are set to
/// zero, which leaves the seed's layers computing exactly what they did.
pub fn from_seed(tensors: &HashMap<String, Tensor>) -> anyhow::Result<HashMap<String, Tensor>> {
    let mapping: [(&str, &[&str]); 12] = [
        (
            "spatial_pooler.attn.0.weight",
            &["roi.pool.fc1.weight", "match.pool.fc1.weight"],
        ),
        (
            "spatial_pooler.attn.0.bias",
            &["roi.pool.fc1.bias", "match.pool.fc1.bias"],
        ),
        (
            "spatial_pooler.attn.2.weight",
            &["roi.pool.fc2.weight", "match.pool.fc2.weight"],
        ),
        ("spatial_pooler.attn.2.bias", &[]),
        ("task_heads.roi_head.0.weight", &["roi.fc1.weight"]),
        ("task_heads.roi_head.0.bias", &["roi.fc1.bias"]),
        ("task_heads.roi_head.3.weight", &["roi.fc2.weight"]),
        ("task_heads.roi_head.3.bias", &["roi.fc2.bias"]),
        ("task_heads.match_head.0.weight", &["match.fc1.weight"]),
        ("task_heads.match_head.0.bias", &["match.fc1.bias"]),
        ("task_heads.match_head.2.weight", &["match.fc2.weight"]),
        ("task_heads.match_head.2.bias", &["match.fc2.bias"]),
    ];
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for (seed_name, ours) in mapping {
        match tensors.get(seed_name) {
            Some(t) => {
                for name in ours {
                    out.insert(name.to_string(), t.clone());
                }
            }
            None => missing.push(seed_name),
        }
    }
    match tensors.get("loss_log_vars") {
        Some(t) => {
            out.insert("task.log_vars".to_string(), t.clone());
        }
        None => missing.push("loss_log_vars"),
    }
    let known: Vec<&str> = mapping
        .iter()
        .map(|m| m.0)
        .chain(["loss_log_vars"])
        .collect();
    // The base model's own tensors may ride along in a full state dict; anything else under
    // the heads' prefixes is unexpected.
    let unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !known.contains(&k.as_str()) && !k.starts_with("base_model."))
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        bail!(
            "not a complete Qwen3VLMultiTask head state dict: missing {:?}, unexpected {:?}",
            missing,
            unexpected
        );
    }
    let fc1 = &out["roi.fc1.weight"];
    let zeros = Tensor::zeros((fc1.dim(0)?, 4), fc1.dtype(), fc1.device())?;
    out.insert("roi.locus.weight".into(), zeros);
    // No text or image comparison either: with zero projections the seed's logit is what it
    // was (the text poolings, query and key then only shape a term that is multiplied by 0).
    let w = out["match.fc1.weight"].clone();
    let (inner, hidden) = w.dims2()?;
    let pool = out["match.pool.fc1.weight"].dim(0)?;
    let mut zero = |name: String, shape: &[usize]| -> anyhow::Result<()> {
        out.insert(name, Tensor::zeros(shape, w.dtype(), w.device())?);
        Ok(())
    };
    for i in 0..TEXT_POOLS {
        zero(format!("match.text_pool.{i}.fc1.weight"), &[pool, hidden])?;
        zero(format!("match.text_pool.{i}.fc1.bias"), &[pool])?;
        zero(format!("match.text_pool.{i}.fc2.weight"), &[1, pool])?;
    }
    zero("match.text.weight".into(), &[inner, TEXT_POOLS * hidden])?;
    zero("match.query.weight".into(), &[KEY_DIM, TEXT_POOLS * hidden])?;
    zero(
        "match.key.weight".into(),
        &[KEY_DIM, hidden + POSITION_FEATURES],
    )?;
    zero(
        "match.image.weight".into(),
        &[inner, 2 * (hidden + POSITION_FEATURES)],
    )?;
    Ok(out)
}

/// The heads' sizes read off the tensors (the default where a tensor is absent; the strict check
/// then names it).
fn sizes_of(tensors: &HashMap<String, Tensor>) -> HeadsConfig {
    let rows = |name: &str, default: usize| {
        tensors
            .get(name)
            .and_then(|t| t.dims().first().copied())
            .unwrap_or(default)
    };
    let d = HeadsConfig::default();
    HeadsConfig {
        pool_hidden: rows("roi.pool.fc1.weight", d.pool_hidden),
        roi_hidden: rows("roi.fc1.weight", d.roi_hidden),
        roi_dropout: d.roi_dropout,
        match_hidden: rows("match.fc1.weight", d.match_hidden),
    }
}

impl Heads {
    /// Loads `file` (either layout) for a model with `hidden` state width, on `device`.
    pub fn load(file: &Path, hidden: usize, device: &Device) -> anyhow::Result<Self> {
        let raw = candle_core::safetensors::load(file, &Device::Cpu)
            .with_context(|| format!("cannot read the heads file {}", file.display()))?;
        let (tensors, layout) = if is_seed_layout(&raw) {
            (
                from_seed(&raw).with_context(|| format!("{}", file.display()))?,
                HeadsLayout::Seed,
            )
        } else {
            (raw, HeadsLayout::Roiscope)
        };
        Self::from_tensors(&tensors, hidden, device, layout)
            .with_context(|| format!("{}", file.display()))
    }

    /// Builds the heads from roiscope-named tensors, strictly.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        hidden: usize,
        device: &Device,
        layout: HeadsLayout,
    ) -> anyhow::Result<Self> {
        let config = sizes_of(tensors);
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let roi = RoiHead::load(vb.pp("roi"), hidden, &config)?;
        let matcher = MatchHead::load(vb.pp("match"), hidden, &config)?;
        let task = TaskWeights::load(vb.pp("task"))?;
        let data = vars.data().lock().expect("heads varmap");
        let mut problems = Vec::new();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            match tensors.get(name) {
                None => problems.push(format!("{name} is missing")),
                Some(t) if t.dims() != var.dims() => problems.push(format!(
                    "{name} has shape {:?}, the model needs {:?} (hidden size {hidden})",
                    t.dims(),
                    var.dims()
                )),
                Some(t) => var.set(&t.to_dtype(DType::F32)?.to_device(device)?)?,
            }
        }
        let mut extra: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
        extra.sort();
        for name in extra {
            problems.push(format!("{name} is unexpected"));
        }
        if !problems.is_empty() {
            bail!("the heads do not fit: {}", problems.join("; "));
        }
        let lv: Vec<f32> = task.s.to_dtype(DType::F32)?.to_vec1()?;
        drop(data);
        Ok(Heads {
            roi,
            matcher,
            log_vars: [lv[0], lv[1], lv[2]],
            config,
            layout,
        })
    }
}
