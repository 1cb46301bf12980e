//! The structured fields editor and the review actions. A field is saved to the store when its
//! editor loses focus or on Enter (one edit per change, not per keystroke), on Ctrl+S, before
//! the record changes and when the window closes. Single-line fields are single-line editors;
//! in the diagnosis (and any field whose text has several lines) Shift+Enter starts a new line.
//! Trailing whitespace is not saved: an Enter or a stray space at the end never becomes part of
//! the training text.

use std::collections::BTreeMap;

use egui::{Color32, RichText, Ui};
use serde_json::Value;

use super::browser::status_colour;
use super::Command;
use crate::data::store::{Edit, ReviewStatus, StoredRecord};

#[derive(Default)]
pub struct FieldsPanel {
    /// The record whose texts are in the buffers.
    record: Option<i64>,
    /// Text being edited, by field name (the diagnosis of a plain-text record under "").
    buffers: BTreeMap<String, String>,
    pub queue_mode: bool,
    new_field: String,
}

/// The key under which a plain-text answer is edited.
const PLAIN: &str = "";

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Enter with no Shift, Ctrl or Alt (egui's logical key matching would take Shift+Enter too).
fn plain_enter(e: &egui::Event) -> bool {
    matches!(
        e,
        egui::Event::Key {
            key: egui::Key::Enter,
            pressed: true,
            modifiers,
            ..
        } if !modifiers.shift && !modifiers.alt && !modifiers.command && !modifiers.ctrl
    )
}

impl FieldsPanel {
    /// The edits that unsaved buffers hold for `record` (the texts with trailing whitespace
    /// removed; a buffer that differs from the stored text only there is no edit).
    pub fn flush(&self, record: &StoredRecord) -> Vec<Edit> {
        let mut edits = Vec::new();
        if self.record != Some(record.id) {
            return edits;
        }
        for (name, text) in &self.buffers {
            let text = text.trim_end();
            if name == PLAIN {
                if record.fields.is_none() && text != record.diagnosis.trim_end() {
                    edits.push(Edit::SetDiagnosis {
                        text: text.to_string(),
                    });
                }
                continue;
            }
            let old = record
                .fields
                .as_ref()
                .and_then(|f| f.get(name))
                .map(text_of);
            if old.as_deref().map(str::trim_end) != Some(text) {
                edits.push(Edit::SetField {
                    name: name.clone(),
                    value: Some(Value::String(text.to_string())),
                });
            }
        }
        edits
    }

    /// Forgets the buffers so they are reloaded from the record (after an edit or undo).
    pub fn reload(&mut self) {
        self.record = None;
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        record: &StoredRecord,
        diagnosis_field: &str,
        commands: &mut Vec<Command>,
    ) {
        if self.record != Some(record.id) {
            self.record = Some(record.id);
            self.buffers.clear();
            match &record.fields {
                Some(fields) => {
                    for (k, v) in fields {
                        self.buffers.insert(k.clone(), text_of(v));
                    }
                }
                None => {
                    self.buffers.insert(PLAIN.into(), record.diagnosis.clone());
                }
            }
        }

        ui.heading(format!("Record #{}", record.id));
        ui.label(RichText::new(&record.image).small())
            .on_hover_text("Image path relative to the data root");
        ui.horizontal(|ui| {
            ui.label("Status:");
            ui.label(
                RichText::new(record.status.as_str())
                    .strong()
                    .color(status_colour(record.status)),
            );
            ui.label(format!(
                "· split {}",
                record.split.map_or("none", |s| s.as_str())
            ));
        });
        ui.horizontal_wrapped(|ui| {
            for (status, label, key, tip) in [
                (
                    ReviewStatus::Accepted,
                    "Accept",
                    "A",
                    "Mark the record accepted (A)",
                ),
                (
                    ReviewStatus::Rejected,
                    "Reject",
                    "R",
                    "Mark the record rejected (R)",
                ),
                (
                    ReviewStatus::NeedsFix,
                    "Needs fix",
                    "F",
                    "Mark the record as needing a fix (F)",
                ),
            ] {
                let button =
                    egui::Button::new(format!("{label} ({key})")).selected(record.status == status);
                if ui.add(button).on_hover_text(tip).clicked() {
                    commands.push(Command::Review(status));
                }
            }
            if ui
                .button("Unreviewed")
                .on_hover_text("Reset the review status to unreviewed")
                .clicked()
            {
                commands.push(Command::Review(ReviewStatus::Unreviewed));
            }
        });
        ui.checkbox(&mut self.queue_mode, "Review queue")
            .on_hover_text(
                "After each review action go to the next unreviewed record (N jumps there too)",
            );
        ui.separator();

        // Every field the record carries, unknown keys too; the diagnosis target first-class.
        let question = record
            .record
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.iter().find(|m| m["role"] == "user"))
            .map(|m| text_of(&m["content"]));
        if let Some(q) = question {
            ui.label(RichText::new("Question").strong());
            ui.label(q);
            ui.separator();
        }
        egui::ScrollArea::vertical()
            .id_salt("fields")
            .show(ui, |ui| {
                let names: Vec<String> = self.buffers.keys().cloned().collect();
                // The record's own field order where it has one.
                let ordered: Vec<String> = match &record.fields {
                    Some(f) => f
                        .keys()
                        .cloned()
                        .chain(names.iter().filter(|n| !f.contains_key(*n)).cloned())
                        .collect(),
                    None => names,
                };
                for name in ordered {
                    let is_diag = name == diagnosis_field || name == PLAIN;
                    let title = if name == PLAIN {
                        "Diagnosis (plain-text answer)".to_string()
                    } else {
                        name.clone()
                    };
                    let label = if is_diag {
                        ui.label(
                            RichText::new(format!("{title} (diagnosis target)"))
                                .strong()
                                .color(Color32::from_rgb(255, 200, 80)),
                        )
                    } else {
                        ui.label(RichText::new(&title).strong())
                    };
                    let Some(buffer) = self.buffers.get_mut(&name) else {
                        continue;
                    };
                    let multiline = is_diag || buffer.contains('\n');
                    let mut edit = if multiline {
                        egui::TextEdit::multiline(buffer)
                            .desired_rows(if is_diag { 3 } else { 2 })
                            // Enter saves (below); Shift+Enter is the new line.
                            .return_key(egui::KeyboardShortcut::new(
                                egui::Modifiers::SHIFT,
                                egui::Key::Enter,
                            ))
                    } else {
                        egui::TextEdit::singleline(buffer)
                    }
                    .desired_width(f32::INFINITY);
                    if is_diag {
                        edit = edit.background_color(Color32::from_rgb(60, 50, 20));
                    }
                    let response = ui
                        .add(edit)
                        .labelled_by(label.id)
                        .on_hover_text(if is_diag {
                            "The diagnosis the model learns to write; Enter saves it, Shift+Enter \
                         starts a new line"
                        } else if multiline {
                            "Enter saves it, Shift+Enter starts a new line; also saved when you \
                         leave the field"
                        } else {
                            "Enter saves it; also saved when you leave the field"
                        });
                    if multiline
                        && response.has_focus()
                        && ui.input(|i| i.events.iter().any(plain_enter))
                    {
                        response.surrender_focus();
                        commands.push(Command::FlushFields);
                    } else if response.lost_focus() {
                        commands.push(Command::FlushFields);
                    }
                }
                if record.fields.is_some() {
                    ui.separator();
                    ui.horizontal(|ui| {
                        let label = ui.label("New field");
                        ui.add(
                            egui::TextEdit::singleline(&mut self.new_field).desired_width(140.0),
                        )
                        .labelled_by(label.id)
                        .on_hover_text("Name of a structured field to add to this record");
                        if ui
                            .button("Add")
                            .on_hover_text("Add the field (empty) to this record")
                            .clicked()
                            && !self.new_field.trim().is_empty()
                        {
                            let name = self.new_field.trim().to_string();
                            self.new_field.clear();
                            commands.push(Command::Edit(Edit::SetField {
                                name,
                                value: Some(Value::String(String::new())),
                            }));
                        }
                    });
                }
            });
    }
}
