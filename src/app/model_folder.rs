//! The Training tab's model folder: the path with a Browse button, a check of the folder with a
//! one-line summary (architecture, sizes, dtype of the weights) or what is wrong with it, and
//! "Create a demo model" (`roiscope init-model`'s engine, on a worker thread with progress), so
//! a newcomer can train without leaving the window.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use candle_core::DType;
use egui::{Color32, RichText, Ui};

use super::file_dialog::{FileDialogs, Target};
use crate::model::config::Qwen3VlConfig;
use crate::model::folder::{init_model, InitSize};

/// The last check: the folder, the modification times it saw, and what it found.
type Checked = (
    PathBuf,
    Vec<Option<std::time::SystemTime>>,
    Result<String, String>,
);

static LAST_CHECK: std::sync::Mutex<Option<Checked>> = std::sync::Mutex::new(None);

/// [`check`], remembered while the folder and its files' modification times stay the same (the
/// Training tab asks every frame; a 2B model's safetensors header is tens of kilobytes of JSON).
pub fn check_cached(dir: &Path) -> Result<String, String> {
    let stamps: Vec<_> = [
        "",
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    .iter()
    .map(|f| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    })
    .collect();
    let mut last = LAST_CHECK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((d, s, r)) = last.as_ref() {
        if d == dir && *s == stamps {
            return r.clone();
        }
    }
    let r = check(dir).map_err(|e| format!("{e:#}"));
    *last = Some((dir.to_path_buf(), stamps, r.clone()));
    r
}

/// A demo model being written.
struct Creating {
    out: PathBuf,
    done: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    rx: Receiver<anyhow::Result<()>>,
}

pub struct ModelFolderPanel {
    creating: Option<Creating>,
    /// The last demo model's result line.
    pub created: Option<Result<String, String>>,
    pub demo_size: InitSize,
    /// Where demo models go; `None`: `models/` in the user's data folder.
    pub demo_parent: Option<PathBuf>,
}

impl Default for ModelFolderPanel {
    fn default() -> Self {
        ModelFolderPanel {
            creating: None,
            created: None,
            demo_size: InitSize::Tiny,
            demo_parent: None,
        }
    }
}

/// Checks a model folder as loading it would (the files, config.json, the weights' header)
/// without reading the weights: a one-line summary, or what is missing and what to do.
pub fn check(dir: &Path) -> anyhow::Result<String> {
    if dir.as_os_str().is_empty() {
        bail!("no model folder: Browse for one, or create a demo model below");
    }
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: Browse for a model folder, or create a demo model below",
            dir.display()
        );
    }
    let mut missing = Vec::new();
    for f in ["config.json", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            missing.push(f);
        }
    }
    if !dir.join("preprocessor_config.json").is_file()
        && !dir.join("processor_config.json").is_file()
    {
        missing.push("preprocessor_config.json");
    }
    let weights = weight_files(dir)?;
    if weights.is_empty() {
        missing.push("model.safetensors");
    }
    if !missing.is_empty() {
        bail!(
            "{} lacks {}: pick the folder that holds a Qwen3-VL model (as saved by \
             transformers, or made by `roiscope init-model`)",
            dir.display(),
            missing.join(", ")
        );
    }
    let config = Qwen3VlConfig::from_file(&dir.join("config.json"))?;
    let mut dtypes = Vec::new();
    let mut bytes = 0u64;
    for w in &weights {
        bytes += std::fs::metadata(w).map(|m| m.len()).unwrap_or(0);
        for d in safetensors_dtypes(w)? {
            if !dtypes.contains(&d) {
                dtypes.push(d);
            }
        }
    }
    let t = &config.text;
    let v = &config.vision;
    Ok(format!(
        "Qwen3-VL, {} parameters: text {} layers x {} (vocabulary {}), vision {} layers x {}; \
         weights {} ({})",
        count(config.parameter_count() as f64),
        t.num_hidden_layers,
        t.hidden_size,
        t.vocab_size,
        v.depth,
        v.hidden_size,
        dtypes.join("+").to_lowercase(),
        size(bytes)
    ))
}

/// The folder's safetensors files: `model.safetensors`, or the shards its index names.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(Vec::new());
    }
    let v = crate::data::files::read_json(&index)?;
    let mut files: Vec<PathBuf> = v["weight_map"]
        .as_object()
        .with_context(|| format!("{} has no weight_map", index.display()))?
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    if let Some(f) = files.iter().find(|f| !f.is_file()) {
        bail!(
            "{} names {}, which is not there",
            index.display(),
            f.display()
        );
    }
    Ok(files)
}

/// The dtypes in a safetensors file's header (8 bytes of length, then JSON), without reading
/// the tensors.
fn safetensors_dtypes(path: &Path) -> anyhow::Result<Vec<String>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        bail!(
            "{} is not a safetensors file (header of {len} bytes)",
            path.display()
        );
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: the header is cut short", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: the header is not JSON", path.display()))?;
    let mut out: Vec<String> = Vec::new();
    for (name, t) in v.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        if let Some(d) = t["dtype"].as_str() {
            if !out.iter().any(|o| o == d) {
                out.push(d.to_string());
            }
        }
    }
    Ok(out)
}

fn count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else {
        format!("{:.1} M", n / 1e6)
    }
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

/// Where a demo model goes: `PARENT/demo-SIZE` (`-2`, `-3`, ... when taken); `parent` defaults
/// to `models/` in the user's data folder (beside the sample project).
pub fn demo_dir(size: InitSize, parent: Option<&Path>) -> PathBuf {
    let name = match size {
        InitSize::Tiny => "demo-tiny",
        InitSize::Small => "demo-small",
        InitSize::Qwen2b => "demo-2b",
    };
    let parent = parent.map(Path::to_path_buf).unwrap_or_else(|| {
        let base = super::sample::user_sample_project_dir();
        base.parent()
            .map(Path::to_path_buf)
            .unwrap_or(base)
            .join("models")
    });
    let mut dir = parent.join(name);
    let mut n = 1;
    while dir.exists() && !empty_dir(&dir) {
        n += 1;
        dir = parent.join(format!("{name}-{n}"));
    }
    dir
}

fn empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Why Start is disabled, in a line the Training tab shows next to it; `None` when it is not.
pub fn why_not_start(busy: bool, project: Option<&Path>, model_folder: &str) -> Option<String> {
    if busy {
        return Some("a run is in progress: one run at a time (Stop and save ends it)".into());
    }
    if project.is_none() {
        return Some("open a project first (File > Open project)".into());
    }
    if model_folder.trim().is_empty() {
        return Some(
            "Start needs a model folder: Browse for one above, or create a demo model".into(),
        );
    }
    match check_cached(Path::new(model_folder.trim())) {
        Ok(_) => None,
        Err(e) => Some(format!("Start needs a usable model folder: {e}")),
    }
}

impl ModelFolderPanel {
    /// Whether a demo model is being written.
    pub fn busy(&self) -> bool {
        self.creating.is_some()
    }

    /// Starts writing a demo model of `size` into `out` on a worker thread.
    pub fn create(&mut self, size: InitSize, out: PathBuf, repaint: Option<egui::Context>) {
        if self.busy() {
            return;
        }
        let (tx, rx) = channel();
        let done = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let (d, t, dir) = (done.clone(), total.clone(), out.clone());
        std::thread::spawn(move || {
            let result = init_model(size, &dir, DType::F32, 0, |n, of| {
                d.store(n, Ordering::Relaxed);
                t.store(of, Ordering::Relaxed);
            })
            .map(|_| ());
            let _ = tx.send(result);
            if let Some(ctx) = repaint {
                ctx.request_repaint();
            }
        });
        self.created = None;
        self.creating = Some(Creating {
            out,
            done,
            total,
            rx,
        });
    }

    /// Takes a finished demo model: its folder becomes the model folder.
    pub fn poll(&mut self, folder: &mut String) {
        let Some(c) = &self.creating else { return };
        let result = match c.rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err(anyhow::anyhow!(
                "the worker writing the model stopped unexpectedly"
            )),
        };
        let out = c.out.clone();
        self.creating = None;
        self.created = Some(match result {
            Ok(()) => {
                *folder = out.display().to_string();
                Ok(format!(
                    "created {} (random weights: for trying the workflow, not for real \
                     predictions)",
                    out.display()
                ))
            }
            Err(e) => Err(format!("could not create the demo model: {e:#}")),
        });
    }

    /// The model folder row, its check line and the demo-model row.
    pub fn ui(&mut self, ui: &mut Ui, folder: &mut String, dialogs: &mut FileDialogs, busy: bool) {
        self.poll(folder);
        if self.creating.is_some() {
            // The worker repaints when done; the bar moves meanwhile.
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(100));
        }
        ui.horizontal(|ui| {
            let label = ui.label("Model folder");
            ui.add_enabled(
                !busy,
                egui::TextEdit::singleline(folder)
                    .desired_width(ui.available_width() - 90.0)
                    .hint_text("/path/to/model"),
            )
            .labelled_by(label.id)
            .on_hover_text(
                "A Qwen3-VL model folder (config.json, model.safetensors, tokenizer.json, \
                 preprocessor_config.json)",
            );
            if !busy {
                dialogs.button(ui, Target::ModelFolder, folder);
            }
        });
        let (text, colour) = match check_cached(Path::new(folder.trim())) {
            Ok(summary) => (summary, Color32::LIGHT_GREEN),
            Err(e) => (e, Color32::from_rgb(240, 170, 60)),
        };
        ui.label(RichText::new(text).small().color(colour));
        ui.horizontal_wrapped(|ui| {
            let creating = self.creating.as_ref();
            ui.add_enabled_ui(creating.is_none() && !busy, |ui| {
                egui::ComboBox::from_id_salt("demo-size")
                    .selected_text(match self.demo_size {
                        InitSize::Tiny => "tiny",
                        _ => "small",
                    })
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut self.demo_size, InitSize::Tiny, "tiny")
                            .on_hover_text("About 10 million parameters: seconds to train a step");
                        ui.selectable_value(&mut self.demo_size, InitSize::Small, "small")
                            .on_hover_text("About 45 million parameters: a curve worth watching");
                    })
                    .response
                    .on_hover_text("Size of the demo model");
            });
            let clicked = ui
                .add_enabled(
                    creating.is_none() && !busy,
                    egui::Button::new("Create a demo model"),
                )
                .on_hover_text(
                    "Write a Qwen3-VL model with random weights into your data folder (as \
                     `roiscope init-model`) and use it here: the whole workflow without a \
                     download",
                )
                .clicked();
            if let Some(c) = creating {
                let (done, total) = (
                    c.done.load(Ordering::Relaxed),
                    c.total.load(Ordering::Relaxed).max(1),
                );
                ui.add(
                    egui::ProgressBar::new(done as f32 / total as f32)
                        .desired_width(160.0)
                        .text(format!("{} tensors of {total}", done.min(total))),
                );
            }
            if clicked {
                let out = demo_dir(self.demo_size, self.demo_parent.as_deref());
                self.create(self.demo_size, out, Some(ui.ctx().clone()));
            }
        });
        match &self.created {
            Some(Ok(m)) => {
                ui.label(RichText::new(m).small().color(Color32::LIGHT_GREEN));
            }
            Some(Err(e)) => {
                ui.label(
                    RichText::new(e)
                        .small()
                        .color(Color32::from_rgb(255, 120, 120)),
                );
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_check_names_what_is_missing_and_summarises_a_model() {
        let tmp = tempfile::tempdir().unwrap();
        let e = check(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("lacks config.json, tokenizer.json"), "{e}");
        let e = check(&tmp.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let out = tmp.path().join("tiny");
        init_model(InitSize::Tiny, &out, DType::F32, 0, |_, _| {}).unwrap();
        let s = check(&out).unwrap();
        assert!(s.starts_with("Qwen3-VL, "), "{s}");
        assert!(
            s.contains("text 2 layers x 64") && s.contains("vision 2 layers x 32"),
            "{s}"
        );
        assert!(s.contains("weights f32"), "{s}");
    }
}
