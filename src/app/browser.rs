//! The record browser: the project's records with thumbnails, filters and counts.

use egui::{Color32, RichText, Sense, Ui, Vec2};

use super::doubt::Predicted;
use super::images::{ImageCache, ImageKey, Slot, THUMB_SIZE};
use super::view::{sort_all, Rows, View};
use super::Command;
use crate::data::store::{BoxSource, ReviewStatus, Split, StoredRecord};

/// What the list shows of one record; rebuilt from the store after every edit to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub image: String,
    pub status: ReviewStatus,
    pub split: Option<Split>,
    pub has_box: bool,
    pub corrected: bool,
    pub diagnosis: String,
    /// Everything the text search looks in, lower case.
    pub haystack: String,
    pub thumb: std::path::PathBuf,
    /// The newest pre-annotation's verdict, box overlap and doubt.
    pub predicted: Option<Predicted>,
}

impl Row {
    pub fn new(r: &StoredRecord, thumb: std::path::PathBuf) -> Row {
        let mut haystack = format!("{} {} {}", r.image, r.diagnosis, r.stratum);
        if let Some(fields) = &r.fields {
            for (k, v) in fields {
                haystack.push(' ');
                haystack.push_str(k);
                haystack.push(' ');
                haystack.push_str(
                    v.as_str()
                        .map_or_else(|| v.to_string(), str::to_string)
                        .as_str(),
                );
            }
        }
        Row {
            id: r.id,
            image: r.image.clone(),
            status: r.status,
            split: r.split,
            has_box: r.ground_truth().is_some(),
            corrected: r.get_box(BoxSource::Corrected).is_some(),
            diagnosis: r.diagnosis.clone(),
            haystack: haystack.to_lowercase(),
            thumb,
            predicted: r
                .prediction
                .as_ref()
                .map(|p| Predicted::of(p, r.ground_truth().map(|b| b.coords))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoxFilter {
    #[default]
    Any,
    With,
    Without,
}

/// Which records by what the model said about them (pre-annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PredictionFilter {
    #[default]
    Any,
    /// The model ran on the record (failed included).
    Predicted,
    NotPredicted,
    /// Predicted, and the diagnosis withheld.
    Unverified,
    /// The predicted box's IoU with the record's box is under [`super::doubt::FAR_IOU`].
    FarBox,
    /// The model failed on the record.
    Failed,
}

impl PredictionFilter {
    pub const ALL: [(PredictionFilter, &'static str); 6] = [
        (PredictionFilter::Any, "predicted or not"),
        (PredictionFilter::Predicted, "predicted"),
        (PredictionFilter::NotPredicted, "not predicted"),
        (PredictionFilter::Unverified, "unverified"),
        (PredictionFilter::FarBox, "box far off"),
        (PredictionFilter::Failed, "prediction failed"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("", |(_, n)| n)
    }

    pub fn matches(self, p: Option<&Predicted>) -> bool {
        match self {
            PredictionFilter::Any => true,
            PredictionFilter::Predicted => p.is_some(),
            PredictionFilter::NotPredicted => p.is_none(),
            PredictionFilter::Unverified => p.is_some_and(|p| !p.failed && !p.verified),
            PredictionFilter::FarBox => p.is_some_and(Predicted::far),
            PredictionFilter::Failed => p.is_some_and(|p| p.failed),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub status: Option<ReviewStatus>,
    pub split: Option<Split>,
    pub boxes: BoxFilter,
    pub prediction: PredictionFilter,
    pub text: String,
}

impl Filters {
    pub fn matches(&self, r: &Row) -> bool {
        self.matches_words(r, &self.words())
    }

    /// The search text's words, lower case (each must be in a row's text).
    pub fn words(&self) -> Vec<String> {
        self.text
            .to_lowercase()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// [`Filters::matches`] with the search words prepared once for many rows.
    pub fn matches_words(&self, r: &Row, words: &[String]) -> bool {
        self.status.is_none_or(|s| s == r.status)
            && self.split.is_none_or(|s| Some(s) == r.split)
            && match self.boxes {
                BoxFilter::Any => true,
                BoxFilter::With => r.has_box,
                BoxFilter::Without => !r.has_box,
            }
            && self.prediction.matches(r.predicted.as_ref())
            && words.iter().all(|w| r.haystack.contains(w.as_str()))
    }
}

/// The list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Id,
    Image,
    Status,
    Diagnosis,
    /// Most doubted by the model first (see [`super::doubt`]); records without a prediction
    /// last. The review queue follows this order.
    Doubt,
}

impl SortBy {
    pub const ALL: [(SortBy, &'static str); 5] = [
        (SortBy::Id, "by id"),
        (SortBy::Image, "by image"),
        (SortBy::Status, "by status"),
        (SortBy::Diagnosis, "by diagnosis"),
        (SortBy::Doubt, "by model doubt"),
    ];
    fn name(self) -> &'static str {
        SortBy::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }
}

#[derive(Default)]
pub struct Browser {
    pub filters: Filters,
    pub sort: SortBy,
    /// A row (index into the rows) to bring into view once the list shows it, after the
    /// keyboard moved the selection, a project opened or the filters changed.
    pub scroll_to: Option<usize>,
    /// The list as shown, computed off the frame (see [`View`]).
    pub view: View,
    /// The "Go to #" field's text.
    pub goto: String,
    /// Ctrl+G: put the keyboard in the "Go to #" field on the next frame.
    pub focus_goto: bool,
}

impl Browser {
    /// Indices into `rows` that pass the filters, in the chosen order (ties by id), computed
    /// now; the list on screen is [`Browser::view`]'s, the same computed off the frame.
    pub fn visible(&self, rows: &Rows) -> Vec<usize> {
        let words = self.filters.words();
        sort_all(rows, self.sort)
            .into_iter()
            .map(|i| i as usize)
            .filter(|&i| self.filters.matches_words(&rows[i], &words))
            .collect()
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        rows: &Rows,
        current: Option<usize>,
        images: &mut ImageCache,
        commands: &mut Vec<Command>,
    ) {
        ui.horizontal(|ui| {
            let label = ui.label("Go to #");
            let r = ui
                .add(
                    egui::TextEdit::singleline(&mut self.goto)
                        .id_salt("browser-goto")
                        .hint_text("id")
                        .desired_width(90.0),
                )
                .labelled_by(label.id)
                .on_hover_text("Type a record id and press Enter to show that record (Ctrl+G)");
            if std::mem::take(&mut self.focus_goto) {
                r.request_focus();
            }
            if r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                let text = self.goto.trim().trim_start_matches('#');
                match text.parse::<i64>() {
                    Ok(id) => commands.push(Command::GoTo(id)),
                    Err(_) if text.is_empty() => {}
                    Err(_) => commands.push(Command::Message(format!(
                        "\"{}\" is not a record id: type the number after # in the list",
                        self.goto.trim()
                    ))),
                }
            }
        });
        let f = &mut self.filters;
        ui.horizontal(|ui| {
            let label = ui.label("Search");
            ui.add(
                egui::TextEdit::singleline(&mut f.text)
                    .hint_text("field, diagnosis, file…")
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(label.id)
            .on_hover_text("Show records whose image name, diagnosis or fields contain every word");
        });
        ui.horizontal_wrapped(|ui| {
            egui::ComboBox::from_id_salt("status-filter")
                .selected_text(f.status.map_or("any status", ReviewStatus::as_str))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut f.status, None, "any status");
                    for s in ReviewStatus::ALL {
                        ui.selectable_value(&mut f.status, Some(s), s.as_str());
                    }
                })
                .response
                .on_hover_text("Filter by review status");
            egui::ComboBox::from_id_salt("split-filter")
                .selected_text(f.split.map_or("any split", Split::as_str))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut f.split, None, "any split");
                    for s in Split::ALL {
                        ui.selectable_value(&mut f.split, Some(s), s.as_str());
                    }
                })
                .response
                .on_hover_text("Filter by train/val/test split");
            egui::ComboBox::from_id_salt("box-filter")
                .selected_text(match f.boxes {
                    BoxFilter::Any => "box or not",
                    BoxFilter::With => "has a box",
                    BoxFilter::Without => "no box",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut f.boxes, BoxFilter::Any, "box or not");
                    ui.selectable_value(&mut f.boxes, BoxFilter::With, "has a box");
                    ui.selectable_value(&mut f.boxes, BoxFilter::Without, "no box");
                })
                .response
                .on_hover_text("Filter by whether the record has a detected or corrected box");
            egui::ComboBox::from_id_salt("prediction-filter")
                .selected_text(f.prediction.name())
                .show_ui(ui, |ui| {
                    for (p, name) in PredictionFilter::ALL {
                        ui.selectable_value(&mut f.prediction, p, name);
                    }
                })
                .response
                .on_hover_text(
                    "Filter by the model's pre-annotation: predicted, unverified (diagnosis \
                     withheld), box far off (IoU with the record's box under 0.5), failed",
                );
            egui::ComboBox::from_id_salt("sort")
                .selected_text(self.sort.name())
                .show_ui(ui, |ui| {
                    for (s, name) in SortBy::ALL {
                        ui.selectable_value(&mut self.sort, s, name);
                    }
                })
                .response
                .on_hover_text(
                    "Order of the list (PageDown/PageUp follow it; by model doubt, the review \
                     queue and N do too)",
                );
        });
        let visible = self.view.order();
        let [unreviewed, accepted, rejected, needs_fix] = self.view.counts();
        ui.label(
            RichText::new(format!(
                "{} of {} shown · {unreviewed} unreviewed · {accepted} accepted · {rejected} \
                 rejected · {needs_fix} needs-fix{}",
                visible.len(),
                rows.len(),
                if self.view.busy() {
                    " · updating…"
                } else {
                    ""
                }
            ))
            .small(),
        );
        ui.separator();
        let row_height = THUMB_SIZE as f32 * 0.75 + 8.0;
        let mut area = egui::ScrollArea::vertical().auto_shrink([false, false]);
        // Only once the list is current: a list still being computed has the old order.
        let pos = match self.scroll_to {
            Some(r) if !self.view.busy() => {
                self.scroll_to = None;
                visible.iter().position(|&v| v == r)
            }
            _ => None,
        };
        if let Some(pos) = pos {
            // Rows are laid out at a fixed pitch; keep a few rows above the selected one.
            let pitch = row_height + ui.spacing().item_spacing.y;
            area = area.vertical_scroll_offset((pos as f32 - 3.0).max(0.0) * pitch);
        }
        area.show_rows(ui, row_height, visible.len(), |ui, range| {
            for &i in &visible[range] {
                let Some(row) = rows.get(i) else { continue };
                let selected = current == Some(i);
                ui.horizontal(|ui| {
                    ui.set_min_height(row_height - 4.0);
                    let thumb = THUMB_SIZE as f32 * 0.75;
                    let key = ImageKey {
                        path: row.thumb.clone(),
                        thumb: true,
                    };
                    let (rect, _) = ui.allocate_exact_size(Vec2::splat(thumb), Sense::hover());
                    match images.get(ui.ctx(), &key) {
                        Slot::Ready(d) => {
                            let size = d.texture.size_vec2();
                            let scale = (thumb / size.x.max(size.y)).min(1.0);
                            let r = egui::Rect::from_center_size(rect.center(), size * scale);
                            ui.painter().image(
                                d.texture.id(),
                                r,
                                egui::Rect::from_min_max(egui::Pos2::ZERO, egui::pos2(1.0, 1.0)),
                                Color32::WHITE,
                            );
                        }
                        Slot::Loading => {
                            ui.painter().rect_filled(rect, 2.0, Color32::from_gray(50));
                        }
                        Slot::Failed(_) => {
                            ui.painter()
                                .rect_filled(rect, 2.0, Color32::from_rgb(90, 25, 25));
                            ui.painter().text(
                                rect.center(),
                                egui::Align2::CENTER_CENTER,
                                "!",
                                egui::FontId::proportional(18.0),
                                Color32::WHITE,
                            );
                        }
                    }
                    ui.vertical(|ui| {
                        let name = row.image.rsplit('/').next().unwrap_or(&row.image);
                        let text = RichText::new(format!("#{} {name}", row.id));
                        ui.selectable_label(selected, if selected { text.strong() } else { text })
                            .on_hover_text(&row.diagnosis)
                            .clicked()
                            .then(|| commands.push(Command::Select(i)));
                        ui.horizontal(|ui| {
                            ui.label(
                                RichText::new(row.status.as_str())
                                    .small()
                                    .color(status_colour(row.status)),
                            );
                            ui.label(RichText::new(row.split.map_or("-", Split::as_str)).small());
                            let boxes = match (row.has_box, row.corrected) {
                                (_, true) => "corrected",
                                (true, false) => "box",
                                (false, false) => "no box",
                            };
                            ui.label(RichText::new(boxes).small());
                            if let Some(p) = &row.predicted {
                                ui.label(RichText::new(prediction_note(p)).small());
                            }
                        });
                    });
                });
            }
        });
    }
}

/// The list's short note on a prediction: "unverified 0.52 · IoU 0.31".
fn prediction_note(p: &Predicted) -> String {
    if p.failed {
        return "prediction failed".into();
    }
    let mut note = format!(
        "{} {:.2}",
        if p.verified { "verified" } else { "unverified" },
        p.score.unwrap_or(0.0)
    );
    if let Some(v) = p.iou {
        note += &format!(" · IoU {v:.2}");
    }
    note
}

pub fn status_colour(s: ReviewStatus) -> Color32 {
    match s {
        ReviewStatus::Unreviewed => Color32::GRAY,
        ReviewStatus::Accepted => Color32::from_rgb(90, 200, 90),
        ReviewStatus::Rejected => Color32::from_rgb(230, 80, 80),
        ReviewStatus::NeedsFix => Color32::from_rgb(240, 180, 60),
    }
}
