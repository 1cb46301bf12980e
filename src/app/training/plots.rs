//! The Training tab's curves: progress, the raw and weighted losses, task weights, learning
//! rates and validation, thinned to the visible range.

use egui::{RichText, Ui};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::curves::smooth;
use super::{RunState, TrainingPanel};
use crate::app::thin::thin;
use crate::train::trainer::TASKS;

/// One colour per task (roi, match, lm) in every plot, lines and markers alike, so a task is
/// the same colour in the training and the validation curves.
const TASK_COLOURS: [egui::Color32; 3] = [
    egui::Color32::from_rgb(230, 95, 80),
    egui::Color32::from_rgb(80, 145, 235),
    egui::Color32::from_rgb(95, 190, 110),
];

impl TrainingPanel {
    pub(super) fn plots_ui(&mut self, ui: &mut Ui, smoothing: &mut f64) {
        let c = &self.curves;
        let step = c.steps.last().copied().unwrap_or(0.0);
        let fraction = if c.total_steps > 0 {
            step as f32 / c.total_steps as f32
        } else {
            0.0
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .show_percentage()
                .text(format!(
                    "step {step:.0} of {} · {} · {:.2} samples/s",
                    c.total_steps,
                    // An ETA only while the run goes on: a stopped or finished run has none.
                    match &self.state {
                        RunState::Running | RunState::Paused | RunState::Loading =>
                            format!("ETA {}", format_eta(c.eta_seconds)),
                        RunState::Stopping => "stopping".into(),
                        RunState::Ended(s) => s.clone(),
                        RunState::Failed(_) => "failed".into(),
                        RunState::Idle => "not running".into(),
                    },
                    c.samples_per_second
                )),
        )
        .on_hover_text("Progress of the run shown below");
        ui.horizontal(|ui| {
            ui.add(egui::Slider::new(smoothing, 0.0..=0.99).text("smoothing"))
                .on_hover_text("Exponential moving average of the curves (0: raw values)");
            ui.label(format!("{} points per curve", c.len()));
        });
        let s = *smoothing;
        let rows = if c.val.steps.is_empty() { 2.0 } else { 3.0 };
        // Each row is a title line and a plot: the plots share what is left after the titles, so
        // the lowest plot's axis label stays inside the window.
        let title =
            ui.text_style_height(&egui::TextStyle::Body) + 2.0 * ui.spacing().item_spacing.y;
        let height = ((ui.available_height() - rows * title) / rows - 2.0).max(120.0);
        let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
        // About a bucket per pixel column over what is in view; see `thin`.
        let (view, buckets) = (self.view_x, (width * ui.pixels_per_point()) as usize);
        let series = |v: &[f64], alpha: f64| -> PlotPoints<'static> {
            thin(&smooth(&c.steps, v, alpha), view, buckets).into()
        };
        let group = ui.make_persistent_id("train-plots");
        let plot = |id: &str, title: &str| {
            Plot::new(id.to_string())
                .height(height)
                .width(width)
                .legend(Legend::default())
                .link_axis(group, [true, false])
                .x_axis_label("step")
                .y_axis_label(title.to_string())
        };
        // The x axes are linked: any plot's range is the range of all.
        let mut seen = None;
        let mut note = |r: &egui_plot::PlotResponse<()>| {
            let b = r.transform.bounds();
            seen = Some((b.min()[0], b.max()[0]));
        };
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.label(RichText::new("Raw loss per task").strong())
                    .on_hover_text("L_i for roi, match and lm");
                note(&plot("raw", "loss").show(ui, |p| {
                    for (i, t) in TASKS.iter().enumerate() {
                        p.line(Line::new(*t, series(&c.loss[i], s)).color(TASK_COLOURS[i]));
                    }
                }));
            });
            ui.vertical(|ui| {
                ui.label(RichText::new("Weighted terms and total").strong())
                    .on_hover_text("0.5 exp(-s_i) L_i + 0.5 s_i per task, and their sum");
                plot("weighted", "term").show(ui, |p| {
                    for (i, t) in TASKS.iter().enumerate() {
                        p.line(
                            Line::new(format!("{t} weighted"), series(&c.weighted[i], s))
                                .color(TASK_COLOURS[i]),
                        );
                    }
                    p.line(Line::new("total", series(&c.total, s)).width(2.5));
                });
            });
        });
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.label(RichText::new("Learned task weights exp(-s_i)").strong())
                    .on_hover_text(
                        "How much each task counts; learned with the uncertainty weighting",
                    );
                plot("precision", "exp(-s)").show(ui, |p| {
                    for (i, t) in TASKS.iter().enumerate() {
                        p.line(
                            Line::new(format!("{t} weight"), series(&c.precision[i], s))
                                .color(TASK_COLOURS[i]),
                        );
                    }
                });
            });
            ui.vertical(|ui| {
                ui.label(RichText::new("Learning rate").strong())
                    .on_hover_text("LoRA and heads parameter groups (warmup, cosine)");
                // Learning rates are 1e-5 to 1e-3: plain decimals would show "0.00".
                let lr_plot =
                    plot("lr", "lr").y_axis_formatter(|mark, _| format!("{:.1e}", mark.value));
                lr_plot.show(ui, |p| {
                    p.line(Line::new("lr lora", series(&c.lr_lora, 0.0)));
                    p.line(Line::new("lr heads", series(&c.lr_heads, 0.0)));
                });
            });
        });
        if !c.val.steps.is_empty() {
            let v = &c.val;
            // Few points (one per validation): drawn as they are, with markers.
            let points = |ys: &[f64]| -> Vec<[f64; 2]> {
                v.steps
                    .iter()
                    .zip(ys)
                    .filter(|(_, y)| y.is_finite())
                    .map(|(&x, &y)| [x, y])
                    .collect()
            };
            ui.horizontal(|ui| {
                ui.vertical(|ui| {
                    ui.label(RichText::new("Validation loss per task").strong())
                        .on_hover_text("Raw L_i on the val split's fixed pairs");
                    plot("val-loss", "val loss").show(ui, |p| {
                        for (i, t) in TASKS.iter().enumerate() {
                            let pts = points(&v.loss[i]);
                            let colour = TASK_COLOURS[i];
                            p.line(
                                Line::new(format!("val {t}"), PlotPoints::from(pts.clone()))
                                    .color(colour),
                            );
                            p.points(
                                egui_plot::Points::new(format!("val {t}"), pts)
                                    .radius(3.0)
                                    .color(colour),
                            );
                        }
                    });
                });
                ui.vertical(|ui| {
                    ui.label(RichText::new("Validation ROI mean IoU and match AUC").strong())
                        .on_hover_text(
                            "On the val split; the best by best_metric keeps its checkpoint",
                        );
                    plot("val-metrics", "value").show(ui, |p| {
                        for (name, ys, colour) in [
                            ("ROI mean IoU", &v.roi_iou, TASK_COLOURS[0]),
                            ("match AUC", &v.match_auc, TASK_COLOURS[1]),
                        ] {
                            let pts = points(ys);
                            p.line(Line::new(name, PlotPoints::from(pts.clone())).color(colour));
                            p.points(egui_plot::Points::new(name, pts).radius(3.0).color(colour));
                        }
                    });
                });
            });
        }
        self.view_x = seen.filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo < hi);
    }
}

fn format_eta(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        return "-".into();
    }
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
