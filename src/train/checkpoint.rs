//! Checkpoint folders of a run, written so that no crash loses the last good one.
//!
//! A checkpoint is built in a hidden staging folder (`.checkpoint-<step>.partial`), every file
//! and the folder flushed to disk (fsync), and only then renamed to `checkpoint-<step>` (and the
//! run folder flushed). Its `trainer_state.json`, written last, lists every file with its size;
//! a folder whose files do not match that list (a power loss after the rename, a copy cut short)
//! is incomplete and never picked by resume, infer or eval. Old checkpoints are removed only
//! after a newer one is complete and durable, and by first renaming them out of the
//! `checkpoint-<step>` names, so a removal cut short leaves nothing that looks complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::data::files::{sync_dir, write_durable_bytes};

/// The file a checkpoint's state is in; written last.
pub const STATE_FILE: &str = "trainer_state.json";

/// The step of a `checkpoint-<step>` folder, from its name.
pub fn checkpoint_step(dir: &Path) -> Option<usize> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// Whether a checkpoint folder is complete: its state parses and every file it lists is there
/// with its size. (Checkpoints written before the list existed count when their three data
/// files are there.)
pub fn is_complete(dir: &Path) -> bool {
    let Ok(state) = crate::data::files::read_json(&dir.join(STATE_FILE)) else {
        return false;
    };
    match state.get("files").and_then(Value::as_object) {
        Some(files) => files.iter().all(|(name, size)| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && Some(m.len()) == size.as_u64())
        }),
        None => [
            "adapter/adapter_model.safetensors",
            "heads.safetensors",
            "optimizer.safetensors",
        ]
        .iter()
        .all(|f| dir.join(f).is_file()),
    }
}

/// The run's complete `checkpoint-<step>` folders, oldest first.
pub fn complete_checkpoints(run: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(run).with_context(|| format!("cannot read {}", run.display()))? {
        let path = entry?.path();
        if let Some(step) = checkpoint_step(&path) {
            if is_complete(&path) {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The highest-numbered complete `checkpoint-<step>` folder of a run. Where there is none but
/// an incomplete one, the error names the newest incomplete folder and what it lacks.
pub fn latest_checkpoint(run: &Path) -> anyhow::Result<PathBuf> {
    if let Some((_, path)) = complete_checkpoints(run)?.pop() {
        return Ok(path);
    }
    let mut incomplete: Vec<(usize, PathBuf)> = std::fs::read_dir(run)
        .with_context(|| format!("cannot read {}", run.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| checkpoint_step(&p).map(|step| (step, p)))
        .collect();
    incomplete.sort();
    match incomplete.pop() {
        Some((_, newest)) => bail!(
            "{} has no complete checkpoint to resume from: {} lacks {}",
            run.display(),
            newest.display(),
            lacking(&newest).join(", ")
        ),
        None => bail!(
            "{} has no complete checkpoint to resume from",
            run.display()
        ),
    }
}

/// What a checkpoint folder lacks: files its state lists that are missing or of another size,
/// or (without a state) the state and the data files.
fn lacking(dir: &Path) -> Vec<String> {
    let state = crate::data::files::read_json(&dir.join(STATE_FILE)).ok();
    match state
        .as_ref()
        .and_then(|s| s.get("files"))
        .and_then(Value::as_object)
    {
        Some(files) => files
            .iter()
            .filter(|(name, size)| {
                !std::fs::metadata(dir.join(name))
                    .is_ok_and(|m| m.is_file() && Some(m.len()) == size.as_u64())
            })
            .map(|(name, _)| name.clone())
            .collect(),
        None => [
            STATE_FILE,
            "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors",
            "heads.safetensors",
            "optimizer.safetensors",
        ]
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect(),
    }
}

/// Flushes a file's contents to disk.
fn sync_file(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {} (fsync)", path.display()))
}

/// Removes a folder by first renaming it to a hidden name, so that a removal cut short never
/// leaves a half-deleted `checkpoint-<step>`.
fn remove_checkpoint_dir(run: &Path, dir: &Path) -> anyhow::Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let doomed = run.join(format!(".{name}.deleting"));
    if doomed.exists() {
        std::fs::remove_dir_all(&doomed)
            .with_context(|| format!("cannot remove {}", doomed.display()))?;
    }
    std::fs::rename(dir, &doomed).with_context(|| format!("cannot remove {}", dir.display()))?;
    sync_dir(run)?;
    std::fs::remove_dir_all(&doomed).with_context(|| format!("cannot remove {}", doomed.display()))
}

/// Writes `checkpoint-<step>` of `run`: `fill` writes the data files into the staging folder it
/// is given, `state` is completed with the list of files and written last. When a complete
/// checkpoint of this step is already there (a stop right after a periodic checkpoint, or a
/// resumed run saving where it began) its parameters are the same, and only its state is
/// replaced (atomically). Afterwards all but the newest `keep` complete checkpoints (and those
/// in `protect`) are removed. Every error names the path that failed; the checkpoints that were
/// there stay.
pub fn write_checkpoint(
    run: &Path,
    step: usize,
    mut state: Value,
    keep: usize,
    protect: &[PathBuf],
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let final_dir = run.join(format!("checkpoint-{step}"));
    clean_staging(run);
    if is_complete(&final_dir) {
        let old = crate::data::files::read_json(&final_dir.join(STATE_FILE))?;
        if let Some(files) = old.get("files") {
            state["files"] = files.clone();
            write_durable_bytes(
                &final_dir.join(STATE_FILE),
                (serde_json::to_string_pretty(&state)? + "\n").as_bytes(),
            )?;
            prune(run, keep, protect)?;
            return Ok(final_dir);
        }
    }
    let staging = run.join(format!(".checkpoint-{step}.partial"));
    let result = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        fill(&staging)?;
        let mut files = serde_json::Map::new();
        let mut dirs = vec![staging.clone()];
        list_files(&staging, &staging, &mut files, &mut dirs)?;
        state["files"] = Value::Object(files);
        let state_path = staging.join(STATE_FILE);
        std::fs::write(&state_path, serde_json::to_string_pretty(&state)? + "\n")
            .with_context(|| format!("cannot write {}", state_path.display()))?;
        sync_file(&state_path)?;
        for dir in dirs.iter().rev() {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if final_dir.exists() {
        // Incomplete (a complete one was handled above): nothing in it is worth keeping.
        remove_checkpoint_dir(run, &final_dir)?;
    }
    std::fs::rename(&staging, &final_dir).with_context(|| {
        format!(
            "cannot rename {} to {}",
            staging.display(),
            final_dir.display()
        )
    })?;
    sync_dir(run)?;
    prune(run, keep, protect)?;
    Ok(final_dir)
}

/// Lists the files below `dir` with their sizes (flushing each to disk), and the folders.
fn list_files(
    root: &Path,
    dir: &Path,
    files: &mut serde_json::Map<String, Value>,
    dirs: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            dirs.push(path.clone());
            list_files(root, &path, files, dirs)?;
        } else {
            sync_file(&path)?;
            let size = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            let name = path.strip_prefix(root).unwrap_or(&path);
            files.insert(name.to_string_lossy().into_owned(), size.into());
        }
    }
    Ok(())
}

/// Removes what killed writers left: staging folders and removals cut short.
fn clean_staging(run: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".checkpoint-")
            && (name.ends_with(".partial") || name.ends_with(".deleting"))
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Keeps the newest `keep` complete checkpoints and those in `protect`.
fn prune(run: &Path, keep: usize, protect: &[PathBuf]) -> anyhow::Result<()> {
    let complete = complete_checkpoints(run)?;
    let excess = complete.len().saturating_sub(keep.max(1));
    for (_, dir) in &complete[..excess] {
        if !protect.contains(dir) {
            remove_checkpoint_dir(run, dir)?;
        }
    }
    Ok(())
}

/// Refuses a checkpoint that cannot be resumed, naming what is wrong with it.
pub fn ensure_complete(dir: &Path) -> anyhow::Result<()> {
    if !is_complete(dir) {
        bail!(
            "{} is incomplete (a write was cut short; it lacks {}); use an earlier checkpoint",
            dir.display(),
            lacking(dir).join(", ")
        );
    }
    Ok(())
}
