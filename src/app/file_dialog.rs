//! Native file dialogs for File > Open project and File > New project (rfd: the desktop's xdg
//! portal over D-Bus, else zenity). A dialog runs on a worker thread, so a slow, hung or missing
//! portal never stops the window; the typed path stays usable next to it, and it is the way when
//! this system has no dialog service.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, TryRecvError};

/// Which path a dialog fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    OpenProject,
    NewRecords,
    NewImages,
    NewProject,
    ModelFolder,
}

impl Target {
    fn title(self) -> &'static str {
        match self {
            Target::OpenProject => "Open a roiscope project folder",
            Target::NewRecords => "Records to import (raw_data.json or JSON lines)",
            Target::NewImages => "Images folder (the data root of the records)",
            Target::NewProject => "Folder for the new project",
            Target::ModelFolder => "Model folder (config.json, model.safetensors, tokenizer.json)",
        }
    }
}

/// What a finished dialog gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    Path(PathBuf),
    /// Closed without a choice, or no dialog could be shown.
    Nothing,
}

pub struct FileDialogs {
    /// `Err(why)` where this system has no dialog service; then only typed paths work.
    pub service: Result<(), String>,
    waiting: Option<(Target, Receiver<Option<PathBuf>>)>,
}

impl Default for FileDialogs {
    fn default() -> Self {
        FileDialogs {
            service: dialog_service(),
            waiting: None,
        }
    }
}

impl FileDialogs {
    /// Whether a dialog is open (its answer not in yet).
    pub fn waiting(&self) -> Option<Target> {
        self.waiting.as_ref().map(|(t, _)| *t)
    }

    /// Whether a dialog may be started now.
    pub fn can_start(&self) -> bool {
        self.service.is_ok() && self.waiting.is_none()
    }

    /// Opens a dialog for `target` on a worker thread, starting in `from` when it is a folder.
    pub fn start(&mut self, ctx: &egui::Context, target: Target, from: &str) {
        if !self.can_start() {
            return;
        }
        let mut dialog = rfd::FileDialog::new().set_title(target.title());
        let from = PathBuf::from(from.trim());
        let dir = if from.is_dir() {
            Some(from)
        } else {
            from.parent().filter(|p| p.is_dir()).map(PathBuf::from)
        };
        if let Some(dir) = dir {
            dialog = dialog.set_directory(dir);
        }
        if target == Target::NewRecords {
            dialog = dialog
                .add_filter("records", &["json", "jsonl"])
                .add_filter("all files", &["*"]);
        }
        let (tx, rx) = channel();
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let picked = match target {
                Target::NewRecords => dialog.pick_file(),
                _ => dialog.pick_folder(),
            };
            let _ = tx.send(picked);
            ctx.request_repaint();
        });
        self.waiting = Some((target, rx));
    }

    /// The finished dialog's answer, once.
    pub fn poll(&mut self) -> Option<(Target, Picked)> {
        let (target, rx) = self.waiting.as_ref()?;
        let picked = match rx.try_recv() {
            Ok(Some(path)) => Picked::Path(path),
            Ok(None) | Err(TryRecvError::Disconnected) => Picked::Nothing,
            Err(TryRecvError::Empty) => return None,
        };
        let target = *target;
        self.waiting = None;
        Some((target, picked))
    }

    /// A "Browse…" button for `target`; it starts the dialog, or says why it cannot.
    pub fn button(&mut self, ui: &mut egui::Ui, target: Target, from: &str) {
        let tip = match (&self.service, self.waiting()) {
            (Err(why), _) => why.clone(),
            (Ok(()), Some(_)) => "A file dialog is open".to_string(),
            (Ok(()), None) => "Choose with the desktop's file dialog".to_string(),
        };
        let clicked = ui
            .add_enabled(self.can_start(), egui::Button::new("Browse…"))
            .on_hover_text(tip)
            .on_disabled_hover_text(match &self.service {
                Err(why) => why.as_str(),
                Ok(()) => "A file dialog is open",
            })
            .clicked();
        if clicked {
            self.start(ui.ctx(), target, from);
        }
    }

    /// One line under a form: waiting for a dialog, or why there is none.
    pub fn note(&self, ui: &mut egui::Ui) {
        if self.waiting.is_some() {
            ui.label(
                egui::RichText::new(
                    "Waiting for the file dialog… (if none appears, type the path)",
                )
                .small(),
            );
        } else if let Err(why) = &self.service {
            ui.label(egui::RichText::new(why).small());
        }
    }
}

/// Whether rfd can show a dialog here: the xdg portal needs a D-Bus session bus; its fallback
/// needs zenity on the PATH. Neither means the typed path is the only way.
pub fn dialog_service() -> Result<(), String> {
    let bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty())
        || std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("bus"))
            .is_some_and(|p| p.exists());
    let zenity = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("zenity").is_file()));
    if bus || zenity {
        Ok(())
    } else {
        Err(
            "No file dialog on this system (no D-Bus session for the desktop portal, no \
             zenity): type the path."
                .to_string(),
        )
    }
}
