//! What a run remembers about how it was started (`RUN_DIR/run.json`): the project, the model
//! folder with a fingerprint of its weights, the devices and the settings. `roiscope train
//! --resume RUN_DIR` needs nothing else, and refuses a model folder whose weights changed (the
//! adapters would no longer fit the base model they were trained on).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::trainer::TrainConfig;
use crate::data::files::{read_json, write_durable_bytes};

/// The record's file inside a run folder.
pub const RUN_FILE: &str = "run.json";

/// Settings that may change when a run is continued: how long it runs, how it saves and how
/// much memory its LM loss takes. Everything else shapes the parameters or the data order, and
/// changing it would not continue the same run.
pub const EXTENDABLE: [&str; 9] = [
    "epochs",
    "max_steps",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "lm_chunk",
    "validate_every",
    "val_examples",
    "best_metric",
];

/// One weight file of the model folder: its size and CRC-32.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightFile {
    pub bytes: u64,
    pub crc32: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The layout of this file (1).
    pub schema: u32,
    pub project: PathBuf,
    pub model: PathBuf,
    /// The model folder's weight files by name.
    pub weights: BTreeMap<String, WeightFile>,
    pub devices: String,
    /// The settings the run was started with (each checkpoint holds those it was written with).
    pub config: TrainConfig,
}

impl RunRecord {
    /// The record of a new run (paths made absolute, the weights fingerprinted).
    pub fn new(
        project: &Path,
        model: &Path,
        devices: &str,
        config: &TrainConfig,
    ) -> anyhow::Result<Self> {
        Ok(RunRecord {
            schema: 1,
            project: absolute(project),
            model: absolute(model),
            weights: fingerprint(model)?,
            devices: devices.to_string(),
            config: config.clone(),
        })
    }

    /// Writes `run/run.json` durably.
    pub fn write(&self, run: &Path) -> anyhow::Result<()> {
        write_durable_bytes(
            &run.join(RUN_FILE),
            (serde_json::to_string_pretty(self)? + "\n").as_bytes(),
        )
    }

    /// The record of `run`; `None` for a run started before records were kept.
    pub fn read(run: &Path) -> anyhow::Result<Option<Self>> {
        let path = run.join(RUN_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let value = read_json(&path)?;
        serde_json::from_value(value)
            .map(Some)
            .with_context(|| format!("{} is not a run record", path.display()))
    }

    /// Refuses a model folder whose weights are not those the run was started on.
    pub fn check_model(&self, model: &Path) -> anyhow::Result<()> {
        let now = fingerprint(model)?;
        if now == self.weights {
            return Ok(());
        }
        let mut names: Vec<&String> = now.keys().chain(self.weights.keys()).collect();
        names.sort();
        names.dedup();
        let changed: Vec<&str> = names
            .into_iter()
            .filter(|n| now.get(*n) != self.weights.get(*n))
            .map(String::as_str)
            .collect();
        bail!(
            "the weights in {} are not those the run was started on ({} changed); resume with \
             the model folder the run was trained on ({})",
            model.display(),
            changed.join(", "),
            self.model.display()
        )
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or(p.into()))
}

/// Size and CRC-32 of every weight file of a model folder (and its `config.json`).
pub fn fingerprint(model: &Path) -> anyhow::Result<BTreeMap<String, WeightFile>> {
    let mut files = crate::model::weights::checkpoint_files(model)?;
    files.push(model.join("config.json"));
    let mut out = BTreeMap::new();
    for path in files {
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.insert(
            name,
            WeightFile {
                bytes,
                crc32: format!("{:08x}", hasher.finalize()),
            },
        );
    }
    Ok(out)
}

/// The settings a continued run goes on with: the run's own, with the keys of the TOML file
/// `file` and `max_steps` put over them. Only [`EXTENDABLE`] keys may change; any other
/// difference is refused by name.
pub fn extend_config(
    run_config: &TrainConfig,
    file: Option<&Path>,
    max_steps: Option<usize>,
) -> anyhow::Result<TrainConfig> {
    let mut table = toml::Table::try_from(run_config).context("the run's settings")?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let given: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid training config", path.display()))?;
        for (key, value) in given {
            table.insert(key, value);
        }
    }
    let mut config: TrainConfig = table.try_into().with_context(|| {
        format!(
            "{} is not a valid training config",
            file.map_or("--config".into(), |p| p.display().to_string())
        )
    })?;
    if let Some(n) = max_steps {
        config.max_steps = n;
    }
    config.validate()?;
    let old = serde_json::to_value(run_config)?;
    let new = serde_json::to_value(&config)?;
    let changed: Vec<&String> = new
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| old.get(k.as_str()) != Some(v) && !EXTENDABLE.contains(&k.as_str()))
        .map(|(k, _)| k)
        .collect();
    if !changed.is_empty() {
        bail!(
            "a continued run keeps its settings; only {} may change, not {}",
            EXTENDABLE.join(", "),
            changed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(config)
}
