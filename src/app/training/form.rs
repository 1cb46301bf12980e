//! The Training tab's left panel: devices, threads, the run's settings, Start / Pause /
//! Stop-and-save (pushed as commands, drained once per frame), the status, the runs list and
//! Continue.

use std::path::Path;

use egui::{RichText, Ui};

use super::{RunState, TrainingPanel};
use crate::app::Command;
use crate::train::trainer::{BaseDtype, TrainConfig};

impl TrainingPanel {
    pub(super) fn settings_ui(
        &mut self,
        ui: &mut Ui,
        project: Option<&Path>,
        model_folder: &str,
        commands: &mut Vec<Command>,
    ) {
        ui.heading("Training");
        let busy = self.busy();
        // Start, Pause, Stop and the status first: in reach without scrolling on a small screen.
        let why_not = crate::app::model_folder::why_not_start(busy, project, model_folder);
        ui.horizontal(|ui| {
            let can_start = why_not.is_none();
            if ui
                .add_enabled(can_start, egui::Button::new("Start"))
                .on_hover_text("Start a new run on the project's train split; metrics and checkpoints go to PROJECT/runs/")
                .on_disabled_hover_text("Open a project and give a model folder; one run at a time")
                .clicked()
            {
                commands.push(Command::StartTraining);
            }
            let paused = self.run.as_ref().is_some_and(|r| r.paused);
            if ui
                .add_enabled(busy, egui::Button::new(if paused { "Resume" } else { "Pause" }))
                .on_hover_text("Pause between batches, or resume")
                .clicked()
            {
                commands.push(Command::PauseOrResumeTraining);
            }
            if ui
                .add_enabled(busy, egui::Button::new("Stop and save"))
                .on_hover_text("Save a checkpoint at the next step boundary and end the run")
                .clicked()
            {
                commands.push(Command::StopTraining);
            }
        });
        if let Some(why) = &why_not {
            ui.label(RichText::new(why).color(egui::Color32::from_rgb(240, 170, 60)));
        }
        let (text, colour) = match &self.state {
            RunState::Idle => ("idle".to_string(), egui::Color32::GRAY),
            RunState::Loading => ("loading the model…".to_string(), egui::Color32::LIGHT_BLUE),
            RunState::Running => ("running".to_string(), egui::Color32::LIGHT_GREEN),
            RunState::Paused => ("paused".to_string(), egui::Color32::YELLOW),
            RunState::Stopping => (
                "stopping: saving a checkpoint…".to_string(),
                egui::Color32::YELLOW,
            ),
            RunState::Ended(s) => (s.clone(), egui::Color32::LIGHT_GREEN),
            RunState::Failed(e) => (
                format!("failed: {e}"),
                egui::Color32::from_rgb(255, 120, 120),
            ),
        };
        ui.label(RichText::new(text).color(colour));
        ui.separator();
        // The model folder (Browse, check, demo model) is the row above the tab: model_folder.rs.
        ui.horizontal(|ui| {
            let label = ui.label("Devices");
            ui.add_enabled(!busy, egui::TextEdit::singleline(&mut self.devices).desired_width(120.0))
                .labelled_by(label.id)
                .on_hover_text("One replica per device: cpu, cuda:0, cuda:0,1 (data parallel); cpu,cpu runs two CPU replicas");
            ui.label(RichText::new(format!("found: {}", devices_found())).small());
        });
        ui.horizontal(|ui| {
            let label = ui.label("CPU threads");
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            ui.add_enabled(!busy, egui::DragValue::new(&mut self.threads).range(1..=cores))
                .labelled_by(label.id)
                .on_hover_text("Threads the trainer computes on; by default all cores but one, so the window stays responsive while a run trains");
        });
        ui.add_enabled_ui(!busy, |ui| config_ui(ui, &mut self.config));
        ui.separator();
        ui.label(RichText::new("Runs").strong());
        if self.runs.is_empty() {
            ui.label(RichText::new("no runs in this project yet").small());
        }
        if let Some((run, _)) = &self.loading {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("reading {}", run.display()));
            });
        }
        let mut load = None;
        for run in &self.runs {
            let name = run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let shown = self.showing.as_deref() == Some(run.as_path());
            if ui
                .selectable_label(shown, &name)
                .on_hover_text("Show this run's curves (from its metrics.jsonl)")
                .clicked()
            {
                load = Some(run.clone());
            }
        }
        if let Some(run) = load {
            if !self.busy() {
                self.load_run(ui.ctx(), run);
            } else {
                self.log
                    .push("a run is in progress; its curves stay on screen".into());
            }
        }
        // A stopped run goes on from its latest checkpoint; a finished one has nothing left.
        let resumable = self
            .checkpoint_step
            .is_some_and(|s| self.curves.total_steps == 0 || s < self.curves.total_steps);
        let can_continue = !self.busy()
            && self.showing.is_some()
            && resumable
            && project.is_some()
            && !model_folder.trim().is_empty();
        let continue_tip = match self.checkpoint_step {
            Some(s) => format!(
                "Continue the run shown from its checkpoint at step {s}, with its own settings \
                 (as `roiscope train --resume`); its curves stay and the new steps join them"
            ),
            None => "Continue the run shown from its latest checkpoint".into(),
        };
        if ui
            .add_enabled(can_continue, egui::Button::new("Continue run"))
            .on_hover_text(continue_tip)
            .on_disabled_hover_text(
                "Show a stopped run that has a checkpoint (click it in the list) and give a \
                 model folder; one run at a time",
            )
            .clicked()
        {
            commands.push(Command::ContinueTraining);
        }
        ui.separator();
        for line in self.log.iter().rev().take(8) {
            ui.label(RichText::new(line).small());
        }
    }
}

/// The training settings, each with its tooltip.
fn config_ui(ui: &mut Ui, c: &mut TrainConfig) {
    egui::Grid::new("train-config").num_columns(2).striped(true).show(ui, |ui| {
        let usize_row = |ui: &mut Ui, name: &str, v: &mut usize, min: usize, tip: &str| {
            ui.label(name).on_hover_text(tip);
            ui.add(egui::DragValue::new(v).range(min..=1_000_000)).on_hover_text(tip);
            ui.end_row();
        };
        usize_row(ui, "epochs", &mut c.epochs, 1, "Passes over the train split");
        usize_row(ui, "max steps", &mut c.max_steps, 0, "Stop after this many optimiser steps (0: all epochs)");
        usize_row(ui, "batch size", &mut c.batch_size, 1, "Samples per batch, all devices together");
        usize_row(ui, "accumulation", &mut c.grad_accum, 1, "Batches per optimiser step (gradient accumulation)");
        usize_row(ui, "warmup steps", &mut c.warmup_steps, 0, "Linear warmup before the cosine schedule");
        usize_row(ui, "LoRA r", &mut c.lora_r, 1, "Rank of the LoRA adapters");
        usize_row(ui, "checkpoint every", &mut c.checkpoint_every, 0, "Steps between checkpoints (0: not by steps); the newest keep_checkpoints are kept");
        usize_row(ui, "validate every", &mut c.validate_every, 0, "Steps between validations on the val split (0: never); also at the end");
        let f64_row = |ui: &mut Ui, name: &str, v: &mut f64, speed: f64, tip: &str| {
            ui.label(name).on_hover_text(tip);
            ui.add(egui::DragValue::new(v).speed(speed).max_decimals(6)).on_hover_text(tip);
            ui.end_row();
        };
        f64_row(ui, "LoRA alpha", &mut c.lora_alpha, 1.0, "LoRA scaling numerator (scale = alpha / r)");
        f64_row(ui, "LoRA dropout", &mut c.lora_dropout, 0.01, "Dropout on the LoRA input");
        f64_row(ui, "lr LoRA", &mut c.lr_lora, 1e-5, "Learning rate of the LoRA adapters");
        f64_row(ui, "lr heads", &mut c.lr_heads, 1e-4, "Learning rate of the ROI and match heads and task weights");
        f64_row(ui, "negative ratio", &mut c.negative_ratio, 0.01, "Expected share of each batch paired with another record's image");
        f64_row(ui, "missed-diagnosis weight", &mut c.missed_diagnosis_weight, 0.5, "Focal-loss weight of true pairs scored under 0.5");
        f64_row(ui, "focal alpha", &mut c.focal_alpha, 0.01, "Focal loss alpha (weight of positives)");
        f64_row(ui, "focal gamma", &mut c.focal_gamma, 0.1, "Focal loss gamma (focus on hard examples)");
        f64_row(ui, "ROI focus weight", &mut c.roi_focus_weight, 0.1, "Weight of the focus loss: where the ROI pooling looks, against the image tokens inside the box");
        for (name, v, tip) in [
            ("train ROI head", &mut c.train_roi, "Off: no ROI loss (ablation presets sft, sft-roi)"),
            ("train match head", &mut c.train_match, "Off: no match loss (set negative ratio to 0 too, as the sft presets do)"),
            ("learn task weights", &mut c.learn_task_weights, "Off: every task weighted 0.5 (preset multitask-fixed)"),
        ] {
            ui.label(name).on_hover_text(tip);
            ui.checkbox(v, "").on_hover_text(tip);
            ui.end_row();
        }
        ui.label("LoRA targets").on_hover_text("Linear layers that get adapters, comma-separated");
        let mut targets = c.lora_targets.join(",");
        if ui
            .add(egui::TextEdit::singleline(&mut targets).desired_width(210.0))
            .on_hover_text("Linear layers that get adapters, comma-separated (q_proj, v_proj, gate_proj, ...)")
            .changed()
        {
            c.lora_targets = targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
        }
        ui.end_row();
        ui.label("hard negatives").on_hover_text("Draw negatives of the same modality/organ with another diagnosis");
        ui.checkbox(&mut c.hard_negatives, "").on_hover_text("Draw negatives of the same modality/organ with another diagnosis");
        ui.end_row();
        let tip = "Dtype of the frozen base weights: bf16 halves their memory (on the CPU each \
                   matrix is widened to f32 for its product); auto is bf16 on a GPU, f32 on the CPU";
        ui.label("base weights").on_hover_text(tip);
        egui::ComboBox::from_id_salt("base-dtype")
            .selected_text(c.base_dtype.name())
            .show_ui(ui, |ui| {
                for d in BaseDtype::ALL {
                    ui.selectable_value(&mut c.base_dtype, d, d.name());
                }
            })
            .response
            .on_hover_text(tip);
        ui.end_row();
        let tip = "Activation recompute: keep only each layer's input through the forward pass \
                   and compute the layer again in backward (a third more compute, a fraction of \
                   the memory); auto: on for models of 1B parameters or more";
        ui.label("recompute").on_hover_text(tip);
        let name = |r: Option<bool>| match r {
            None => "auto",
            Some(true) => "on",
            Some(false) => "off",
        };
        egui::ComboBox::from_id_salt("recompute")
            .selected_text(name(c.recompute))
            .show_ui(ui, |ui| {
                for r in [None, Some(true), Some(false)] {
                    ui.selectable_value(&mut c.recompute, r, name(r));
                }
            })
            .response
            .on_hover_text(tip);
        ui.end_row();
    });
}

fn devices_found() -> String {
    // CUDA devices are only visible in a build with the cuda feature.
    if cfg!(feature = "cuda") {
        "cpu, cuda (see --devices)".into()
    } else {
        format!(
            "cpu ({} cores)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    }
}
