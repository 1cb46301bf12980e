//! File > New project: `roiscope prepare` from the window. The import (detection, marker
//! removal, splits) runs on a worker thread with its progress shown; when it ends the new
//! project opens.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};

use egui::{RichText, Ui};

use super::file_dialog::{FileDialogs, Target};
use super::Command;
use crate::data::image_io::DEFAULT_MAX_PIXELS;
use crate::data::prepare::{prepare, PrepareOptions, Progress};
use crate::data::store::SplitRatios;

enum Message {
    Progress(Progress),
    Done(Result<String, String>),
}

pub struct NewProject {
    pub open: bool,
    pub input: String,
    pub images: String,
    pub project: String,
    pub diagnosis_field: String,
    progress: Option<Progress>,
    running: Option<Receiver<Message>>,
    pub result: Option<Result<String, String>>,
}

impl Default for NewProject {
    fn default() -> Self {
        NewProject {
            open: false,
            input: String::new(),
            images: String::new(),
            project: String::new(),
            diagnosis_field: "Clinical Diagnosis Tips".into(),
            progress: None,
            running: None,
            result: None,
        }
    }
}

impl NewProject {
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the import on a worker thread.
    pub fn start(&mut self, ctx: &egui::Context) {
        let opts = PrepareOptions {
            input: PathBuf::from(self.input.trim()),
            images: PathBuf::from(self.images.trim()),
            project: PathBuf::from(self.project.trim()),
            diagnosis_field: self.diagnosis_field.trim().to_string(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            skip_unboxed: false,
            ratios: SplitRatios::default(),
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_changes: false,
            stay_in_root: false,
        };
        let (tx, rx) = channel();
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let result = prepare(&opts, &mut |p| {
                let _ = tx.send(Message::Progress(*p));
                ctx.request_repaint();
            });
            let done = result
                .map(|r| {
                    format!(
                        "{} records kept ({} without a box), {} skipped",
                        r.kept, r.kept_without_box, r.skipped
                    )
                })
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Message::Done(done));
            ctx.request_repaint();
        });
        self.progress = None;
        self.result = None;
        self.running = Some(rx);
    }

    /// Takes the worker's messages; the project to open when the import succeeded.
    pub fn poll(&mut self) -> Option<PathBuf> {
        let rx = self.running.as_ref()?;
        let mut opened = None;
        while let Ok(m) = rx.try_recv() {
            match m {
                Message::Progress(p) => self.progress = Some(p),
                Message::Done(r) => {
                    if r.is_ok() {
                        opened = Some(PathBuf::from(self.project.trim()));
                    }
                    self.result = Some(r);
                    self.running = None;
                    break;
                }
            }
        }
        opened
    }

    pub fn ui(
        &mut self,
        ctx: &egui::Context,
        dialogs: &mut FileDialogs,
        commands: &mut Vec<Command>,
    ) {
        if let Some(dir) = self.poll() {
            commands.push(Command::OpenProject(dir));
        }
        let mut open = self.open;
        egui::Window::new("New project")
            .open(&mut open)
            .collapsible(false)
            // Wide enough for the 380 px path fields and their Browse buttons: a window that
            // sizes itself to its first frame squeezed them to ~40 px.
            .min_width(640.0)
            .show(ctx, |ui| self.form(ui, dialogs));
        self.open = open;
    }

    /// Puts a path a file dialog gave into its field.
    pub fn picked(&mut self, target: Target, path: PathBuf) {
        let text = path.display().to_string();
        match target {
            Target::NewRecords => self.input = text,
            Target::NewImages => self.images = text,
            Target::NewProject => self.project = text,
            Target::OpenProject | Target::ModelFolder => {}
        }
    }

    fn form(&mut self, ui: &mut Ui, dialogs: &mut FileDialogs) {
        ui.label("Import seed-format records (as `roiscope prepare` does).");
        let busy = self.busy();
        egui::Grid::new("new-project")
            .num_columns(3)
            .show(ui, |ui| {
                for (label, value, tip, target) in [
                    (
                        "Records",
                        &mut self.input,
                        "raw_data.json (a JSON array) or JSON lines",
                        Some(Target::NewRecords),
                    ),
                    (
                        "Images folder",
                        &mut self.images,
                        "The data root: record image paths are relative to it",
                        Some(Target::NewImages),
                    ),
                    (
                        "Project folder",
                        &mut self.project,
                        "Where the project is created (new or empty folder)",
                        Some(Target::NewProject),
                    ),
                    (
                        "Diagnosis field",
                        &mut self.diagnosis_field,
                        "The structured field that holds the diagnosis",
                        None,
                    ),
                ] {
                    let l = ui.label(label);
                    ui.add_enabled_ui(!busy, |ui| {
                        ui.add_sized(
                            [380.0, ui.spacing().interact_size.y],
                            egui::TextEdit::singleline(value),
                        )
                    })
                    .inner
                    .labelled_by(l.id)
                    .on_hover_text(tip);
                    match target {
                        Some(t) if !busy => dialogs.button(ui, t, value),
                        _ => {
                            ui.label("");
                        }
                    }
                    ui.end_row();
                }
            });
        dialogs.note(ui);
        let ready = !busy
            && [&self.input, &self.images, &self.project]
                .iter()
                .all(|s| !s.trim().is_empty());
        if ui
            .add_enabled(ready, egui::Button::new("Create"))
            .on_hover_text(
                "Detect the ROIs, remove the markers, assign splits, then open the project",
            )
            .clicked()
        {
            self.start(ui.ctx());
        }
        if let Some(p) = &self.progress {
            let f = if p.total > 0 {
                p.done as f32 / p.total as f32
            } else {
                0.0
            };
            ui.add(egui::ProgressBar::new(f).text(format!("{} of {} records", p.done, p.total)));
        }
        match &self.result {
            Some(Ok(m)) => {
                ui.label(RichText::new(m).color(egui::Color32::LIGHT_GREEN));
            }
            Some(Err(e)) => {
                ui.label(RichText::new(e).color(egui::Color32::from_rgb(255, 120, 120)));
            }
            None => {}
        }
    }
}
