//! Finding the files roiscope ships (the sample project, the tokenizer): an environment variable
//! first, then `share/roiscope/` next to an installed binary, then the source checkout's
//! `assets/`.

use std::path::{Path, PathBuf};

/// The path of `rel` (relative to `assets/` in the source, `share/roiscope/` when installed),
/// unless `env_var` names another. An installed copy counts when it exists (a folder: when
/// `marker` exists inside it).
pub fn asset_path(env_var: &str, rel: &str, marker: Option<&str>) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            let installed = prefix.join("share/roiscope").join(rel);
            let probe = marker.map_or_else(|| installed.clone(), |m| installed.join(m));
            if probe.exists() {
                return installed;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(rel)
}
