//! The keyboard shortcuts, listed once: the help overlay shows this table.

pub const SHORTCUTS: &[(&str, &str)] = &[
    ("F1 or ?", "show or hide this help"),
    ("PageDown / J", "next record"),
    ("PageUp / K", "previous record"),
    (
        "N",
        "next unreviewed record (sorted by model doubt: the next most doubted)",
    ),
    ("Ctrl+G", "go to a record by its id (#N)"),
    (
        "Enter / Shift+Enter",
        "in a field: save it / in a multi-line field: a new line",
    ),
    ("Ctrl+S", "save the field being edited"),
    ("A / R / F", "accept / reject / needs fix"),
    ("Ctrl+Z", "undo"),
    ("Ctrl+Shift+Z or Ctrl+Y", "redo"),
    ("Arrows", "move the box 1 px (Shift: 10 px)"),
    (
        "Ctrl+Arrows",
        "resize the box from its right/bottom edge 1 px (Shift: 10 px)",
    ),
    ("Delete / Backspace", "remove the corrected box"),
    ("D", "reset the corrected box to the detected one"),
    ("0 / Home", "fit the image"),
    ("1", "one image pixel per screen pixel"),
    ("M", "original pixels / marker-removed image"),
    (
        "Drag on the image",
        "draw a box; drag inside it to move, a handle to resize",
    ),
    ("Wheel", "zoom at the cursor"),
    ("Middle drag, Space+drag", "pan"),
    ("Right drag", "window/level (grey and DICOM images)"),
];

pub fn ui(ui: &mut egui::Ui) {
    egui::Grid::new("shortcuts")
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            for (keys, what) in SHORTCUTS {
                ui.label(egui::RichText::new(*keys).monospace().strong());
                ui.label(*what);
                ui.end_row();
            }
        });
}
