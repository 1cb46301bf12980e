//! The Export section of the Batch tab: `roiscope export`'s engine
//! ([`crate::data::export::export`]) on a worker, which reads its own snapshot of the project
//! while the window keeps editing; the lines the command prints are shown when it ends.

use std::path::{Path, PathBuf};

use egui::{RichText, Ui};

use super::evaluate::WARNING;
use super::task::Task;
use super::Command;
use crate::data::export::{export, ExportFormat, ExportOptions, ImageChoice};
use crate::data::store::{Project, Split};

const FORMATS: [(ExportFormat, &str, &str); 4] = [
    (ExportFormat::SeedJson, "seed-json", "json"),
    (ExportFormat::Llamafactory, "llamafactory", "json"),
    (ExportFormat::Jsonl, "jsonl", "jsonl"),
    (ExportFormat::Coco, "coco", "json"),
];

fn format_name(f: ExportFormat) -> (&'static str, &'static str) {
    FORMATS
        .iter()
        .find(|(g, _, _)| *g == f)
        .map_or(("?", "json"), |(_, n, e)| (n, e))
}

pub struct ExportPanel {
    pub format: ExportFormat,
    pub split: Option<Split>,
    pub images: ImageChoice,
    /// The file to write; empty: `PROJECT/exports/<format>[-<split>].<ext>`.
    pub out: String,
    pub task: Option<Task<Vec<String>>>,
    /// The written file and what the export said, or why it failed.
    pub result: Option<Result<(PathBuf, Vec<String>), String>>,
    writing: Option<PathBuf>,
}

impl Default for ExportPanel {
    fn default() -> Self {
        ExportPanel {
            format: ExportFormat::Jsonl,
            split: None,
            images: ImageChoice::Original,
            out: String::new(),
            task: None,
            result: None,
            writing: None,
        }
    }
}

impl ExportPanel {
    /// The file an export goes to.
    pub fn target(&self, project: &Path) -> PathBuf {
        match self.out.trim() {
            "" => {
                let (name, ext) = format_name(self.format);
                let split = self
                    .split
                    .map_or(String::new(), |s| format!("-{}", s.as_str()));
                project.join("exports").join(format!("{name}{split}.{ext}"))
            }
            typed => PathBuf::from(typed),
        }
    }

    pub fn start(&mut self, ctx: Option<egui::Context>, project: &Path) {
        let out = self.target(project);
        let opts = ExportOptions {
            split: self.split,
            images: self.images,
            ..ExportOptions::default()
        };
        let (dir, format, target) = (project.to_path_buf(), self.format, out.clone());
        self.result = None;
        self.writing = Some(out);
        self.task = Some(Task::spawn("export", ctx, move |_| {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let project = Project::open(&dir)?;
            Ok(export(&project, format, &opts, &target)?.lines(&target))
        }));
    }

    pub fn poll(&mut self) {
        let Some(result) = self.task.as_ref().and_then(Task::poll) else {
            return;
        };
        self.task = None;
        let out = self.writing.take().unwrap_or_default();
        self.result = Some(result.map(|lines| (out, lines)));
    }

    pub fn ui(&mut self, ui: &mut Ui, project: Option<&Path>, commands: &mut Vec<Command>) {
        ui.heading("Project export");
        ui.horizontal(|ui| {
            let label = ui.label("Format");
            egui::ComboBox::from_id_salt("export-format")
                .selected_text(format_name(self.format).0)
                .show_ui(ui, |ui| {
                    for (f, name, _) in FORMATS {
                        ui.selectable_value(&mut self.format, f, name);
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "seed-json: the seed's format; llamafactory: LLaMA-Factory's sharegpt JSON \
                     and its dataset_info.json entry; jsonl: everything, re-importable; coco: \
                     detection JSON",
                );
            let label = ui.label("Split");
            egui::ComboBox::from_id_salt("export-split")
                .selected_text(self.split.map_or("all", Split::as_str))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.split, None, "all");
                    for s in Split::ALL {
                        ui.selectable_value(&mut self.split, Some(s), s.as_str());
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text("Only this split");
            let mut marker_free = self.images == ImageChoice::MarkerFree;
            if ui
                .checkbox(&mut marker_free, "marker-free images")
                .on_hover_text(
                    "seed-json, llamafactory: point at the project's marker-free copies (the \
                     green outline removed) instead of the input images",
                )
                .changed()
            {
                self.images = if marker_free {
                    ImageChoice::MarkerFree
                } else {
                    ImageChoice::Original
                };
            }
        });
        let hint = project.map_or(String::new(), |p| self.target(p).display().to_string());
        ui.horizontal(|ui| {
            let label = ui.label("File");
            ui.add(
                egui::TextEdit::singleline(&mut self.out)
                    .hint_text(hint)
                    .desired_width(420.0),
            )
            .labelled_by(label.id)
            .on_hover_text("The file to write (atomically); empty: the project's exports folder");
        });
        let why_not = if project.is_none() {
            Some("open a project first")
        } else if self.task.is_some() {
            Some("an export is running")
        } else {
            None
        };
        ui.horizontal(|ui| {
            if ui
                .add_enabled(why_not.is_none(), egui::Button::new("Export"))
                .on_hover_text("Write the project in this format (roiscope export's engine)")
                .clicked()
            {
                commands.push(Command::Export);
            }
            if self.task.is_some() {
                ui.spinner();
                ui.label("exporting…");
            }
        });
        match &self.result {
            Some(Ok((out, lines))) => {
                ui.label(format!("wrote {}", out.display()));
                for line in lines {
                    ui.label(RichText::new(line).small());
                }
            }
            Some(Err(e)) => {
                ui.label(RichText::new(format!("export failed: {e}")).color(WARNING));
            }
            None => {}
        }
    }
}
