//! The Batch tab: work over many records with a trained checkpoint, each on a worker the frame
//! loop polls — pre-annotation ([`preannotate`](super::preannotate)), evaluation
//! ([`evaluate`](super::evaluate)) and export ([`export`](super::export)). This file draws the
//! tab and runs its commands; the sections hold their own settings and results.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::Ui;

use super::browser::Row;
use super::evaluate::EvalPanel;
use super::export::ExportPanel;
use super::preannotate::{Job, PreannotatePanel, Scope};
use super::{Command, Workbench};
use crate::infer::preannotate::PreannotateRequest;

#[derive(Default)]
pub struct BatchPanel {
    pub preannotate: PreannotatePanel,
    pub eval: EvalPanel,
    pub export: ExportPanel,
    /// When the training runs were last listed for this tab.
    runs_listed: Option<Instant>,
}

impl BatchPanel {
    pub fn busy(&self) -> bool {
        self.preannotate.busy() || self.eval.task.is_some() || self.export.task.is_some()
    }
}

impl Workbench {
    /// The project's latest training run, the default checkpoint. Listed again every few
    /// seconds: a run `roiscope train` made while the window was open counts too.
    fn latest_run(&mut self) -> Option<PathBuf> {
        let dir = self.project.as_ref()?.dir().to_path_buf();
        if self
            .batch
            .runs_listed
            .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
        {
            self.training.forget_runs();
            self.batch.runs_listed = Some(Instant::now());
        }
        self.training.refresh_runs(&dir);
        self.training.runs.first().cloned()
    }

    /// Reads the project's pre-annotation runs again (a project opened, a pass started or
    /// ended).
    pub(super) fn refresh_preannotation_runs(&mut self) {
        let runs = match &self.project {
            Some(p) => p.preannotation_runs(),
            None => Ok(Vec::new()),
        };
        match runs {
            Ok(runs) => self.batch.preannotate.runs = runs,
            Err(e) => {
                self.message = Some((format!("cannot read the pre-annotation runs: {e:#}"), true))
            }
        }
    }

    /// Runs a Batch tab command; `false` when `c` is not one.
    pub(super) fn run_batch_command(&mut self, c: &Command) -> bool {
        match c {
            Command::Preannotate => self.start_preannotation(None),
            Command::ResumePreannotation(run) => self.start_preannotation(Some(*run)),
            Command::CancelPreannotation => {
                if let Some(job) = &self.batch.preannotate.job {
                    job.cancel();
                }
            }
            Command::Evaluate => {
                let latest = self.latest_run();
                let model = self
                    .batch
                    .preannotate
                    .choice(&self.settings.model_folder, latest.as_deref());
                match (&self.project, model) {
                    (Some(p), Ok(model)) => {
                        let dir = p.dir().to_path_buf();
                        self.batch.eval.start(None, &dir, &model);
                    }
                    (None, _) => self.error("open a project first"),
                    (_, Err(why)) => self.error(&format!("cannot evaluate: {why}")),
                }
            }
            Command::Export => match &self.project {
                Some(p) => {
                    let dir = p.dir().to_path_buf();
                    self.batch.export.start(None, &dir);
                }
                None => self.error("open a project first"),
            },
            Command::OpenFile(path) => self.open_file(path),
            _ => return false,
        }
        true
    }

    pub(super) fn error(&mut self, text: &str) {
        self.message = Some((text.to_string(), true));
    }

    /// Starts a new pre-annotation run (`resume: None`) or goes on with one.
    fn start_preannotation(&mut self, resume: Option<i64>) {
        if self.batch.preannotate.busy() {
            return self.error("a pre-annotation is running: cancel it first");
        }
        let latest = self.latest_run();
        let model = match self
            .batch
            .preannotate
            .choice(&self.settings.model_folder, latest.as_deref())
        {
            Ok(m) => m,
            Err(why) => return self.error(&format!("cannot pre-annotate: {why}")),
        };
        let scope = self.batch.preannotate.scope;
        let (ids, words): (Vec<i64>, String) = match scope {
            Scope::Filtered => {
                let ids: Vec<i64> = self
                    .browser
                    .view
                    .order()
                    .iter()
                    .filter_map(|&i| self.rows.get(i).map(|r| r.id))
                    .collect();
                let n = ids.len();
                (ids, format!("{n} filtered records"))
            }
            Scope::Split(s) => (
                self.rows
                    .iter()
                    .filter(|r| r.split == Some(s))
                    .map(|r| r.id)
                    .collect(),
                format!("split {}", s.as_str()),
            ),
        };
        let Some(project) = &mut self.project else {
            return self.error("open a project first");
        };
        let run_id = match resume {
            Some(run) => run,
            None => {
                if ids.is_empty() {
                    return self.error("no records to pre-annotate: the list or split is empty");
                }
                match project.start_preannotation(
                    &model.folder.display().to_string(),
                    &model.checkpoint.display().to_string(),
                    &words,
                    &ids,
                ) {
                    Ok(id) => id,
                    Err(e) => return self.error(&format!("cannot start a pre-annotation: {e:#}")),
                }
            }
        };
        let req = PreannotateRequest {
            project: project.dir().to_path_buf(),
            run_id,
            model: model.folder,
            checkpoint: model.checkpoint,
            weights: model.weights,
            max_new_tokens: model.max_new_tokens,
            threshold: None,
        };
        self.batch.preannotate.note = None;
        self.batch.preannotate.job = Some(Job::start(req, None));
        self.refresh_preannotation_runs();
    }

    /// Takes what the Batch tab's workers did since the last frame.
    pub(super) fn poll_batch(&mut self, ctx: &egui::Context) {
        if let Some(job) = &mut self.batch.preannotate.job {
            let (stored, ended) = job.poll();
            let same_project = self.project.as_ref().map(|p| p.dir()) == Some(job.project());
            let run_id = job.run_id;
            if same_project {
                self.refresh_rows(&stored);
            }
            if let Some(result) = ended {
                self.batch.preannotate.job = None;
                self.refresh_preannotation_runs();
                // The failures the store holds for the run, whichever pass met them.
                let runs = &self.batch.preannotate.runs;
                let errors = same_project
                    .then(|| runs.iter().find(|r| r.id == run_id))
                    .flatten()
                    .map_or(0, |r| r.errors);
                self.batch.preannotate.note =
                    Some(PreannotatePanel::ended(run_id, &result, errors));
            }
        }
        if let Some(report) = self.batch.eval.poll() {
            self.open_file(&report);
        }
        self.batch.export.poll();
        if self.batch.busy() {
            // The workers do not know the context: look again shortly.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    /// Reads these records again into the list (their predictions changed); the list is
    /// recomputed once for all of them.
    fn refresh_rows(&mut self, ids: &[i64]) {
        let Some(project) = &self.project else { return };
        let mut changed = false;
        for &id in ids {
            let Ok(i) = self.rows.binary_search_by_key(&id, |r| r.id) else {
                continue;
            };
            match project.record(id) {
                Ok(r) => {
                    self.rows[i] = Arc::new(Row::new(&r, project.image_path(&r)));
                    changed = true;
                    // The shown record gets its new box; the fields being edited stay.
                    if self.current == Some(i) {
                        self.record = Some(r);
                    }
                }
                Err(e) => {
                    self.message = Some((format!("cannot read record {id}: {e:#}"), true));
                }
            }
        }
        if changed {
            self.rows_generation += 1;
        }
    }

    /// Opens a file (the evaluation report) with the desktop's default application.
    fn open_file(&mut self, path: &Path) {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        match std::process::Command::new(opener).arg(path).spawn() {
            Ok(mut child) => {
                // Reaped off the UI thread; the viewer may run for long.
                std::thread::spawn(move || child.wait());
                self.message = Some((format!("opened {}", path.display()), false));
            }
            Err(e) => self.error(&format!(
                "cannot open {} with {opener}: {e}; open it in a web browser",
                path.display()
            )),
        }
    }

    /// The Batch tab.
    pub(super) fn batch_ui(&mut self, ui: &mut Ui) {
        let latest = self.latest_run();
        let project = self.project.as_ref().map(|p| p.dir().to_path_buf());
        let filtered = self.browser.view.order().len();
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                ui.heading("Model");
                ui.label(format!(
                    "Model folder (Training tab): {}",
                    match self.settings.model_folder.trim() {
                        "" => "not set",
                        m => m,
                    }
                ));
                let panel = &mut self.batch.preannotate;
                panel.model_ui(ui, latest.as_deref());
                let why_not = match &project {
                    None => Some("open a project first"),
                    Some(_) => panel
                        .choice(&self.settings.model_folder, latest.as_deref())
                        .err(),
                };
                ui.separator();
                panel.ui(ui, filtered, why_not, &mut self.commands);
                ui.separator();
                self.batch.eval.ui(ui, why_not, &mut self.commands);
                ui.separator();
                self.batch
                    .export
                    .ui(ui, project.as_deref(), &mut self.commands);
            });
        });
    }
}
