//! What survives a restart: one serde struct saved through eframe's storage. Caches, textures
//! and channels live beside it in the app and are rebuilt on start.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The overlay layers the canvas can draw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Layers {
    pub detected: bool,
    pub corrected: bool,
    pub predicted: bool,
    /// Show the marker-removed image instead of the original pixels.
    pub marker_removed: bool,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            detected: true,
            corrected: true,
            predicted: true,
            marker_removed: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The project open last; `None` opens the sample project.
    pub project: Option<PathBuf>,
    /// Most recent first, at most [`MAX_RECENT`].
    pub recent: Vec<PathBuf>,
    pub model_folder: String,
    /// Verify threshold of the match head: a diagnosis scored under it is "unverified".
    pub verify_threshold: f64,
    pub layers: Layers,
    pub dark_theme: bool,
    /// Exponential smoothing of the training curves, 0 (raw) to 0.99.
    pub smoothing: f64,
}

pub const MAX_RECENT: usize = 8;

/// The key in eframe's storage.
pub const STORAGE_KEY: &str = "roiscope.settings";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            project: None,
            recent: Vec::new(),
            model_folder: String::new(),
            verify_threshold: 0.5,
            layers: Layers::default(),
            dark_theme: true,
            smoothing: 0.6,
        }
    }
}

impl Settings {
    /// Puts `dir` first in the recent list.
    pub fn remember(&mut self, dir: PathBuf) {
        self.recent.retain(|p| p != &dir);
        self.recent.insert(0, dir.clone());
        self.recent.truncate(MAX_RECENT);
        self.project = Some(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_an_older_or_partial_file_keep_their_defaults() {
        // A file written before a field existed still loads; the new field takes its default.
        let s: Settings =
            serde_json::from_str(r#"{"model_folder": "/m", "layers": {"predicted": false}}"#)
                .unwrap();
        assert_eq!(s.model_folder, "/m");
        assert!(!s.layers.predicted && s.layers.detected);
        assert_eq!(s.verify_threshold, Settings::default().verify_threshold);
    }

    #[test]
    fn recent_projects_are_unique_newest_first_and_bounded() {
        let mut s = Settings::default();
        for i in 0..12 {
            s.remember(PathBuf::from(format!("/p{i}")));
        }
        s.remember(PathBuf::from("/p5"));
        assert_eq!(s.recent.len(), MAX_RECENT);
        assert_eq!(s.recent[0], PathBuf::from("/p5"));
        assert_eq!(
            s.recent
                .iter()
                .filter(|p| p.as_path() == std::path::Path::new("/p5"))
                .count(),
            1
        );
        assert_eq!(s.project, Some(PathBuf::from("/p5")));
    }
}
