//! The prediction panel. The locate -> verify -> diagnose pipeline (issue 7, `src/infer/`) is not
//! in the engine yet, so this panel shows what the project already holds (a predicted box and its
//! score, written by an earlier import or run) and says plainly that running the model from here
//! is not available yet.

use egui::{Color32, RichText, Ui};

use super::Command;
use crate::data::store::{BoxSource, StoredRecord};

pub fn ui(ui: &mut Ui, record: &StoredRecord, threshold: &mut f64, commands: &mut Vec<Command>) {
    ui.label(RichText::new("Prediction").strong());
    ui.label(
        RichText::new(
            "Not available yet: running locate -> verify -> diagnose from the workbench needs the \
             inference pipeline (issue 7), which is not in this build.",
        )
        .small()
        .color(Color32::from_rgb(240, 190, 90)),
    );
    ui.add(egui::Slider::new(threshold, 0.0..=1.0).text("verify threshold"))
        .on_hover_text("A diagnosis whose match score is under this is shown as unverified");
    match record.get_box(BoxSource::Predicted) {
        Some(b) => {
            let verdict = match b.confidence {
                Some(s) if s >= *threshold => format!("score {s:.3}: verified"),
                Some(s) => format!("score {s:.3}: unverified (under {threshold:.2})"),
                None => "no score".into(),
            };
            ui.label(format!(
                "Stored predicted box [{:.3}, {:.3}, {:.3}, {:.3}] · {verdict}",
                b.coords[0], b.coords[1], b.coords[2], b.coords[3]
            ));
            if ui
                .button("Accept the predicted box as the correction")
                .on_hover_text("Copy the predicted box into the corrected box (one undoable edit)")
                .clicked()
            {
                commands.push(Command::SetBox(Some(b.coords)));
            }
        }
        None => {
            ui.label(RichText::new("This record has no predicted box.").small());
        }
    }
}
