//! The bundled sample project, prepared once into a per-user project folder, so the first run
//! of `roiscope` opens something real.

use std::path::PathBuf;

use crate::data::image_io::DEFAULT_MAX_PIXELS;
use crate::data::prepare::{prepare, PrepareOptions};
use crate::data::sample::sample_dir;
use crate::data::store::{SplitRatios, DB_FILE};

/// `$XDG_DATA_HOME/roiscope/sample-project`, else `~/.local/share/roiscope/sample-project`, else
/// a folder under the temporary directory (no home at all).
pub fn user_sample_project_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("roiscope").join("sample-project")
}

/// Prepares the bundled sample into `dir` unless a project is already there; returns `dir`.
pub fn ensure_sample_project(dir: PathBuf) -> anyhow::Result<PathBuf> {
    if dir.join(DB_FILE).is_file() {
        return Ok(dir);
    }
    let sample = sample_dir();
    let opts = PrepareOptions {
        input: sample.join("raw_data.json"),
        images: sample,
        project: dir.clone(),
        diagnosis_field: "Clinical Diagnosis Tips".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        skip_unboxed: false,
        ratios: SplitRatios::default(),
        max_pixels: DEFAULT_MAX_PIXELS,
        apply_changes: false,
        stay_in_root: false,
    };
    prepare(&opts, &mut |_| {})?;
    Ok(dir)
}
