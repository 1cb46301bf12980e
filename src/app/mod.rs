//! The workbench window (eframe/egui). It talks to the engine through the same library calls
//! as the command line: the project store for records and edits, the trainer for training.
//!
//! Layout of the code, one concern per file: [`Workbench`] owns the state and drains the
//! [`Command`]s that panels push (UI code does no side effects inline); [`browser`], [`canvas`],
//! [`fields`], [`training`] and [`predict`] are the panels; [`batch`] is the tab of work over
//! many records (pre-annotation, evaluation, export, each on a [`task`]); [`images`] decodes off
//! the UI thread;
//! [`settings`] is what survives a restart; [`shortcuts`] maps keys to commands.

pub mod batch;
pub mod browser;
pub mod canvas;
pub mod doubt;
pub mod evaluate;
pub mod export;
pub mod fields;
pub mod file_dialog;
pub mod fonts;
pub mod help;
pub mod images;
pub mod model_folder;
pub mod new_project;
pub mod open;
pub mod preannotate;
pub mod predict;
pub mod queue;
pub mod sample;
pub mod settings;
pub mod shortcuts;
pub mod task;
pub mod thin;
pub mod training;
pub mod view;
pub mod window;

pub use window::run;

use std::path::{Path, PathBuf};

use egui::{RichText, Ui};

use crate::data::store::{BoxSource, Edit, Project, ReviewStatus, StoredRecord};
use browser::{Browser, Row};
use canvas::{Canvas, CanvasInput, WINDOW_PRESETS};
use fields::FieldsPanel;
use file_dialog::{FileDialogs, Picked, Target};
use images::{ImageCache, ImageKey};
use open::Opening;
use predict::PredictPanel;
use settings::Settings;
use training::TrainingPanel;
use view::{Refreshed, Rows};

/// The size of small text (status lines, notes), in points.
pub const SMALL_TEXT: f32 = 12.0;

/// Who the store records as the author of workbench edits.
pub fn editor_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    format!("{user} (workbench)")
}

/// What panels ask the app to do; drained once per frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    OpenProject(PathBuf),
    OpenSample,
    /// Select the row at this index of the full list.
    Select(usize),
    /// Show the record with this id ("Go to #").
    GoTo(i64),
    /// Put this line in the status bar.
    Message(String),
    /// Ctrl+S: save the field being edited.
    Save,
    /// Ctrl+G: the keyboard to the "Go to #" field.
    FocusGoTo,
    /// Move by this many rows in the filtered list.
    Step(i32),
    NextUnreviewed,
    /// Set (or remove) the corrected box, normalised.
    SetBox(Option<[f64; 4]>),
    /// Move (or with `resize`, grow the right/bottom edge of) the box by image pixels.
    Nudge {
        dx: f64,
        dy: f64,
        resize: bool,
    },
    ResetToDetected,
    Review(ReviewStatus),
    Edit(Edit),
    FlushFields,
    Undo,
    Redo,
    Fit,
    OneToOne,
    ToggleMarkerRemoved,
    ToggleHelp,
    /// Batch tab: start a pre-annotation run over its scope.
    Preannotate,
    /// Batch tab: go on with this run's records that have no prediction yet.
    ResumePreannotation(i64),
    CancelPreannotation,
    Evaluate,
    Export,
    /// Open a file with the desktop's application for it (the evaluation report).
    OpenFile(PathBuf),
    /// Training tab: a new run on the project with the form's settings.
    StartTraining,
    /// Training tab: the run shown, continued from its latest checkpoint.
    ContinueTraining,
    PauseOrResumeTraining,
    /// Stop at the next step boundary and save a checkpoint.
    StopTraining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Review,
    Training,
    /// Pre-annotation, evaluation and export.
    Batch,
}

pub struct Workbench {
    pub settings: Settings,
    pub project: Option<Project>,
    /// Every record of the project, in id order.
    pub rows: Rows,
    /// Bumped whenever `rows` are replaced or one changes what the list shows of it.
    rows_generation: u64,
    /// A project being read on a worker thread (File > Open).
    pub opening: Option<Opening>,
    /// Index into `rows`.
    pub current: Option<usize>,
    pub record: Option<StoredRecord>,
    pub images: ImageCache,
    pub canvas: Canvas,
    pub browser: Browser,
    pub fields: FieldsPanel,
    pub training: TrainingPanel,
    pub model_folder: model_folder::ModelFolderPanel,
    pub predict: PredictPanel,
    pub batch: batch::BatchPanel,
    pub commands: Vec<Command>,
    pub tab: Tab,
    pub show_help: bool,
    /// The last message for the status bar, and whether it is an error.
    pub message: Option<(String, bool)>,
    open_path: String,
    show_open: bool,
    pub new_project: new_project::NewProject,
    /// Native file dialogs (off the UI thread) for the Open and New project windows.
    pub dialogs: FileDialogs,
    cjk_font: Option<Option<PathBuf>>,
}

impl Workbench {
    /// A workbench with no project open yet.
    pub fn new(settings: Settings) -> Self {
        Workbench {
            settings,
            project: None,
            rows: Vec::new(),
            rows_generation: 0,
            opening: None,
            current: None,
            record: None,
            images: ImageCache::new(2),
            canvas: Canvas::default(),
            browser: Browser::default(),
            fields: FieldsPanel::default(),
            training: TrainingPanel::default(),
            model_folder: model_folder::ModelFolderPanel::default(),
            predict: PredictPanel::default(),
            batch: batch::BatchPanel::default(),
            commands: Vec::new(),
            tab: Tab::Review,
            show_help: false,
            message: None,
            open_path: String::new(),
            show_open: false,
            new_project: new_project::NewProject::default(),
            dialogs: FileDialogs::default(),
            cjk_font: None,
        }
    }

    /// Opens the project in `dir` now, in this thread; on failure the message is shown and the
    /// old project stays. The window opens projects with [`Workbench::open_in_background`].
    pub fn open_project(&mut self, dir: &Path) {
        self.opening = None;
        let result = open::load(dir, &open::Progress::default());
        self.finish_open(dir, result);
    }

    /// Starts reading the project in `dir` on a worker thread; the window stays responsive and
    /// the status bar shows the progress. The open project stays until the new one is read.
    pub fn open_in_background(&mut self, dir: PathBuf) {
        self.message = None;
        self.opening = Some(Opening::start(dir, None));
    }

    /// Takes a finished background open.
    fn poll_opening(&mut self, ctx: &egui::Context) {
        let Some(opening) = &self.opening else { return };
        match opening.poll() {
            Some(result) => {
                let dir = opening.dir.clone();
                self.opening = None;
                self.finish_open(&dir, result);
            }
            // The worker does not know the context: look again shortly.
            None => ctx.request_repaint_after(std::time::Duration::from_millis(50)),
        }
    }

    fn finish_open(&mut self, dir: &Path, result: anyhow::Result<open::Loaded>) {
        match result {
            Ok(loaded) => {
                // An edit in progress belongs to the project that was open.
                self.flush_fields();
                self.project = Some(loaded.project);
                self.rows = loaded.rows;
                self.rows_generation += 1;
                self.browser.view.clear();
                self.current = None;
                self.record = None;
                self.fields.reload();
                self.refresh_preannotation_runs();
                if !self.rows.is_empty() {
                    self.select(0);
                }
                // The list starts at the selected record, not where the last project's was.
                self.browser.scroll_to = self.current;
                self.settings.remember(dir.to_path_buf());
                self.message = Some((
                    format!(
                        "opened {} ({} records)",
                        dir.display(),
                        open::thousands(self.rows.len())
                    ),
                    false,
                ));
            }
            Err(e) => self.message = Some((format!("cannot open {}: {e:#}", dir.display()), true)),
        }
    }

    /// The generation of `rows`: changes when they are replaced or one changes.
    pub fn rows_generation(&self) -> u64 {
        self.rows_generation
    }

    fn select(&mut self, index: usize) {
        if index >= self.rows.len() {
            return;
        }
        self.flush_fields();
        self.current = Some(index);
        self.reload_current();
    }

    /// Reads the current record again from the store (after an edit, undo or redo).
    fn reload_current(&mut self) {
        let (Some(project), Some(i)) = (&self.project, self.current) else {
            return;
        };
        let id = self.rows[i].id;
        match project.record(id) {
            Ok(r) => {
                let row = Row::new(&r, project.image_path(&r));
                // Flipping re-reads each record: the list is recomputed only when what it
                // shows of the record changed.
                if *self.rows[i] != row {
                    self.rows[i] = std::sync::Arc::new(row);
                    self.rows_generation += 1;
                }
                self.record = Some(r);
            }
            Err(e) => self.message = Some((format!("cannot read record {id}: {e:#}"), true)),
        }
        self.fields.reload();
    }

    fn apply(&mut self, edit: Edit) {
        let (Some(project), Some(record)) = (&mut self.project, &self.record) else {
            return;
        };
        match project.apply_edit(record.id, &edit, &editor_name()) {
            Ok(_) => self.message = Some((format!("saved: {}", describe(&edit)), false)),
            Err(e) => self.message = Some((format!("could not save the edit: {e:#}"), true)),
        }
        self.reload_current();
    }

    /// Saves an edit in progress in the fields (record switch, Ctrl+S, window close).
    pub fn flush_fields(&mut self) {
        let Some(record) = &self.record else { return };
        for edit in self.fields.flush(record) {
            self.apply(edit);
        }
        // The fields show what is stored now (trailing whitespace that was not saved goes).
        self.fields.reload();
    }

    /// The box the keyboard edits: the corrected one, else the detected one, in image pixels.
    fn editable_px(&self) -> Option<[f64; 4]> {
        let r = self.record.as_ref()?;
        let b = r
            .get_box(BoxSource::Corrected)
            .or_else(|| r.get_box(BoxSource::Detected))?;
        let (w, h) = (r.width as f64, r.height as f64);
        Some([
            b.coords[0] * w,
            b.coords[1] * h,
            b.coords[2] * w,
            b.coords[3] * h,
        ])
    }

    fn undo_redo(&mut self, redo: bool) {
        self.flush_fields();
        let Some(project) = &mut self.project else {
            return;
        };
        let result = if redo { project.redo() } else { project.undo() };
        match result {
            Ok(Some(info)) => {
                // Show the record the step changed.
                if let Some(i) = self.rows.iter().position(|r| r.id == info.record_id) {
                    self.current = Some(i);
                }
                self.message = Some((
                    format!(
                        "{} {} of record #{}",
                        if redo { "redid" } else { "undid" },
                        info.kind,
                        info.record_id
                    ),
                    false,
                ));
                self.reload_current();
            }
            Ok(None) => {
                self.message = Some((
                    format!("nothing to {}", if redo { "redo" } else { "undo" }),
                    false,
                ))
            }
            Err(e) => self.message = Some((format!("{e:#}"), true)),
        }
    }

    /// "Go to #id": selects that record and scrolls the list to it; when the filters hide it they
    /// are cleared (the order stays), and the status bar says so.
    fn go_to(&mut self, id: i64) {
        let Ok(i) = self.rows.binary_search_by_key(&id, |r| r.id) else {
            let range = match (self.rows.first(), self.rows.last()) {
                (Some(a), Some(b)) => format!(" (ids {} to {})", a.id, b.id),
                _ => String::new(),
            };
            self.message = Some((format!("no record #{id} in this project{range}"), true));
            return;
        };
        let hidden = !self.browser.filters.matches(&self.rows[i]);
        if hidden {
            self.browser.filters = browser::Filters::default();
        }
        self.select(i);
        self.browser.scroll_to = Some(i);
        self.message = Some((
            if hidden {
                format!("record #{id}; the filters hid it, so they were cleared")
            } else {
                format!("record #{id}")
            },
            false,
        ));
    }

    /// Runs the commands the panels pushed this frame.
    pub fn drain_commands(&mut self) {
        let commands = std::mem::take(&mut self.commands);
        for c in commands {
            self.run_command(c);
        }
    }

    fn run_command(&mut self, c: Command) {
        if self.run_batch_command(&c) {
            return;
        }
        match c {
            Command::OpenProject(dir) => self.open_in_background(dir),
            Command::OpenSample => {
                match sample::ensure_sample_project(sample::user_sample_project_dir()) {
                    Ok(dir) => self.open_in_background(dir),
                    Err(e) => {
                        self.message =
                            Some((format!("cannot prepare the sample project: {e:#}"), true))
                    }
                }
            }
            Command::Select(i) => self.select(i),
            Command::GoTo(id) => self.go_to(id),
            Command::Message(m) => self.message = Some((m, true)),
            Command::Save => {
                let pending = self
                    .record
                    .as_ref()
                    .map_or(0, |r| self.fields.flush(r).len());
                self.flush_fields();
                if pending == 0 {
                    self.message = Some((
                        "nothing to save: every change is saved as it is made".into(),
                        false,
                    ));
                }
            }
            Command::FocusGoTo => {
                self.tab = Tab::Review;
                self.browser.focus_goto = true;
            }
            Command::Step(d) => {
                let visible = self.browser.view.order();
                if visible.is_empty() {
                    return;
                }
                let pos = self
                    .current
                    .and_then(|c| visible.iter().position(|&v| v == c));
                let next = match pos {
                    Some(p) => (p as i64 + d as i64).clamp(0, visible.len() as i64 - 1) as usize,
                    None => 0,
                };
                let next = visible[next];
                self.select(next);
                self.browser.scroll_to = Some(next);
            }
            Command::NextUnreviewed => self.next_unreviewed(),
            Command::SetBox(b) => self.apply(Edit::SetBox {
                source: BoxSource::Corrected,
                coords: b,
            }),
            Command::Nudge { dx, dy, resize } => {
                let (Some(mut b), Some(r)) = (self.editable_px(), &self.record) else {
                    return;
                };
                let (w, h) = (r.width as f64, r.height as f64);
                if resize {
                    b[2] = (b[2] + dx).clamp(b[0] + 1.0, w);
                    b[3] = (b[3] + dy).clamp(b[1] + 1.0, h);
                } else {
                    let dx = dx.clamp(-b[0], w - b[2]);
                    let dy = dy.clamp(-b[1], h - b[3]);
                    b = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
                }
                self.apply(Edit::SetBox {
                    source: BoxSource::Corrected,
                    coords: Some([b[0] / w, b[1] / h, b[2] / w, b[3] / h]),
                });
            }
            Command::ResetToDetected => {
                let detected = self
                    .record
                    .as_ref()
                    .and_then(|r| r.get_box(BoxSource::Detected))
                    .map(|b| b.coords);
                match detected {
                    Some(d) => self.apply(Edit::SetBox {
                        source: BoxSource::Corrected,
                        coords: Some(d),
                    }),
                    None => self.message = Some(("this record has no detected box".into(), false)),
                }
            }
            Command::Review(status) => {
                self.flush_fields();
                self.apply(Edit::SetStatus { status });
                if self.fields.queue_mode {
                    self.run_command(Command::NextUnreviewed);
                }
            }
            Command::Edit(edit) => self.apply(edit),
            Command::FlushFields => self.flush_fields(),
            Command::Undo => self.undo_redo(false),
            Command::Redo => self.undo_redo(true),
            Command::Fit => self.canvas.fit(),
            Command::OneToOne => self.canvas.one_to_one(),
            Command::ToggleMarkerRemoved => self.settings.layers.marker_removed ^= true,
            Command::ToggleHelp => self.show_help ^= true,
            Command::StartTraining | Command::ContinueTraining => {
                let model = PathBuf::from(self.settings.model_folder.trim());
                match &self.project {
                    Some(p) if !model.as_os_str().is_empty() => {
                        let dir = p.dir().to_path_buf();
                        if c == Command::StartTraining {
                            self.training.start(&dir, &model);
                        } else {
                            self.training.continue_run(&dir, &model);
                        }
                    }
                    Some(_) => self.error("give a model folder first"),
                    None => self.error("open a project first"),
                }
            }
            Command::PauseOrResumeTraining => self.training.pause_or_resume(),
            Command::StopTraining => self.training.stop(),
            Command::Preannotate
            | Command::ResumePreannotation(_)
            | Command::CancelPreannotation
            | Command::Evaluate
            | Command::Export
            | Command::OpenFile(_) => {}
        }
    }

    /// The whole window; `App::ui` calls this, and so do the tests.
    pub fn ui(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        if self.cjk_font.is_none() {
            self.cjk_font = Some(fonts::install_cjk_fallback(&ctx));
            // egui's small text is 9 px, too small to read on a workstation screen: the list's
            // status lines and notes use it.
            ctx.all_styles_mut(|style| {
                style.text_styles.insert(
                    egui::TextStyle::Small,
                    egui::FontId::proportional(SMALL_TEXT),
                );
            });
        }
        ctx.set_visuals(if self.settings.dark_theme {
            egui::Visuals::dark()
        } else {
            egui::Visuals::light()
        });
        if ctx.input(|i| i.viewport().close_requested()) {
            // The window is closing: an edit in progress is saved, not lost.
            self.flush_fields();
        }
        self.images.poll(&ctx);
        self.training.poll();
        self.training.guard_close(&ctx, &mut self.commands);
        self.predict.poll();
        self.poll_opening(&ctx);
        self.poll_batch(&ctx);
        let refreshed = self.browser.view.refresh(
            &self.rows,
            self.rows_generation,
            &self.browser.filters,
            self.browser.sort,
            Some(&ctx),
        );
        if refreshed == Refreshed::Filters && self.browser.scroll_to.is_none() {
            // New filters or order: the selected record stays in view.
            self.browser.scroll_to = self.current;
        }
        shortcuts::read(&ctx, self.tab, &mut self.commands);

        egui::Panel::top("menu").show(ui, |ui| self.menu_ui(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_ui(ui));
        match self.tab {
            Tab::Review => self.review_ui(ui),
            Tab::Training => {
                let busy = self.training.busy();
                egui::Panel::top("model-folder").show(ui, |ui| {
                    self.model_folder.ui(
                        ui,
                        &mut self.settings.model_folder,
                        &mut self.dialogs,
                        busy,
                    );
                });
                let project = self.project.as_ref().map(|p| p.dir().to_path_buf());
                self.training.ui(
                    ui,
                    project.as_deref(),
                    &mut self.settings.model_folder,
                    &mut self.settings.smoothing,
                    &mut self.commands,
                );
            }
            Tab::Batch => self.batch_ui(ui),
        }
        if self.show_help {
            let mut open = true;
            egui::Window::new("Keyboard shortcuts")
                .open(&mut open)
                .collapsible(false)
                .show(&ctx, help::ui);
            self.show_help &= open;
        }
        self.take_dialog_answer();
        if self.new_project.open || self.new_project.busy() {
            self.new_project
                .ui(&ctx, &mut self.dialogs, &mut self.commands);
        }
        if self.show_open {
            self.open_dialog(&ctx);
        }
        self.drain_commands();
    }

    fn menu_ui(&mut self, ui: &mut Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui
                    .button("Open project…")
                    .on_hover_text(
                        "Open a project folder: choose it in a file dialog or type its path",
                    )
                    .clicked()
                {
                    self.show_open = true;
                    let from = self.open_from();
                    self.dialogs.start(ui.ctx(), Target::OpenProject, &from);
                    ui.close();
                }
                if ui
                    .button("New project...")
                    .on_hover_text(
                        "Import records and images into a new project (roiscope prepare)",
                    )
                    .clicked()
                {
                    self.new_project.open = true;
                    ui.close();
                }
                if ui
                    .button("Open the sample project")
                    .on_hover_text("The bundled sample, prepared into your data folder")
                    .clicked()
                {
                    self.commands.push(Command::OpenSample);
                    ui.close();
                }
                ui.menu_button("Recent projects", |ui| {
                    if self.settings.recent.is_empty() {
                        ui.label("none yet");
                    }
                    for p in self.settings.recent.clone() {
                        if ui
                            .button(p.display().to_string())
                            .on_hover_text("Open this project")
                            .clicked()
                        {
                            self.commands.push(Command::OpenProject(p));
                            ui.close();
                        }
                    }
                });
            });
            ui.menu_button("Edit", |ui| {
                if ui
                    .button("Undo (Ctrl+Z)")
                    .on_hover_text("Take back the last edit")
                    .clicked()
                {
                    self.commands.push(Command::Undo);
                    ui.close();
                }
                if ui
                    .button("Redo (Ctrl+Shift+Z)")
                    .on_hover_text("Re-apply the edit undone last")
                    .clicked()
                {
                    self.commands.push(Command::Redo);
                    ui.close();
                }
            });
            ui.menu_button("View", |ui| {
                let l = &mut self.settings.layers;
                ui.checkbox(&mut l.detected, "Detected ROI (green)")
                    .on_hover_text("The box found in the pixels");
                ui.checkbox(&mut l.corrected, "Corrected box")
                    .on_hover_text("The box an annotator set");
                ui.checkbox(&mut l.predicted, "Predicted box")
                    .on_hover_text("The model's box with its score");
                ui.checkbox(&mut l.marker_removed, "Marker-removed image (M)")
                    .on_hover_text("The image the model sees, green outline removed");
                ui.separator();
                ui.checkbox(&mut self.settings.dark_theme, "Dark theme")
                    .on_hover_text("Dark or light colours");
            });
            if ui
                .button("Help")
                .on_hover_text("Keyboard shortcuts (F1)")
                .clicked()
            {
                self.show_help = true;
            }
            ui.separator();
            ui.selectable_value(&mut self.tab, Tab::Review, "Review")
                .on_hover_text("Browse, correct and review records");
            ui.selectable_value(&mut self.tab, Tab::Training, "Training")
                .on_hover_text("Train a model on this project and watch the losses");
            ui.selectable_value(&mut self.tab, Tab::Batch, "Batch")
                .on_hover_text("Pre-annotate records with a checkpoint, evaluate it, export");
            if let Some(p) = &self.project {
                ui.label(RichText::new(p.dir().display().to_string()).small())
                    .on_hover_text("The open project");
            }
        });
    }

    fn open_dialog(&mut self, ctx: &egui::Context) {
        let mut open = true;
        let mut submit = false;
        egui::Window::new("Open project")
            .open(&mut open)
            .collapsible(false)
            // Wide enough for the 420 px path field: sized by its wrapped note, the window
            // squeezed the field to ~320 px.
            .min_width(480.0)
            .show(ctx, |ui| {
                ui.label("Project folder (made by `roiscope prepare`):");
                let r = ui
                    .horizontal(|ui| {
                        let label = ui.label("Path");
                        ui.add(egui::TextEdit::singleline(&mut self.open_path).desired_width(420.0))
                            .labelled_by(label.id)
                    })
                    .inner
                    .on_hover_text("Type or paste the folder that holds roiscope.db");
                if r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                    submit = true;
                }
                ui.horizontal(|ui| {
                    if ui
                        .button("Open")
                        .on_hover_text("Open this folder")
                        .clicked()
                    {
                        submit = true;
                    }
                    let from = if self.open_path.trim().is_empty() {
                        self.open_from()
                    } else {
                        self.open_path.clone()
                    };
                    self.dialogs.button(ui, Target::OpenProject, &from);
                });
                self.dialogs.note(ui);
            });
        if submit && !self.open_path.trim().is_empty() {
            self.commands
                .push(Command::OpenProject(PathBuf::from(self.open_path.trim())));
            open = false;
        }
        self.show_open = open;
    }

    /// Where the Open dialog starts: the folder that holds the open project.
    fn open_from(&self) -> String {
        self.project
            .as_ref()
            .and_then(|p| p.dir().parent())
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }

    /// Takes a finished file dialog's answer into its window.
    fn take_dialog_answer(&mut self) {
        let Some((target, picked)) = self.dialogs.poll() else {
            return;
        };
        match (target, picked) {
            (Target::OpenProject, Picked::Path(dir)) => {
                self.open_path = dir.display().to_string();
                self.show_open = false;
                self.commands.push(Command::OpenProject(dir));
            }
            (Target::ModelFolder, Picked::Path(dir)) => {
                self.settings.model_folder = dir.display().to_string();
            }
            (_, Picked::Path(path)) => self.new_project.picked(target, path),
            (_, Picked::Nothing) => {
                self.message = Some((
                    "no file dialog answer (closed, or none could be shown here): type the path"
                        .into(),
                    false,
                ))
            }
        }
    }

    fn status_ui(&mut self, ui: &mut Ui) {
        if let Some(o) = &self.opening {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("opening {}: {}", o.dir.display(), o.describe()));
                ui.add(
                    egui::ProgressBar::new(o.fraction())
                        .desired_width(240.0)
                        .show_percentage(),
                );
            });
        }
        ui.horizontal(|ui| match &self.message {
            Some((m, true)) => {
                ui.label(RichText::new(m).color(egui::Color32::from_rgb(255, 120, 120)));
            }
            Some((m, false)) => {
                ui.label(m);
            }
            None => {
                ui.label("F1: keyboard shortcuts");
            }
        });
    }

    fn review_ui(&mut self, ui: &mut Ui) {
        egui::Panel::left("browser")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                ui.heading("Records");
                self.browser.ui(
                    ui,
                    &self.rows,
                    self.current,
                    &mut self.images,
                    &mut self.commands,
                );
            });
        egui::Panel::right("fields")
            .resizable(true)
            .default_size(340.0)
            .show(ui, |ui| match &self.record {
                Some(record) => {
                    let field = self
                        .project
                        .as_ref()
                        .map_or("", |p| p.diagnosis_field())
                        .to_string();
                    let image = self
                        .project
                        .as_ref()
                        .map(|p| p.training_image_path(record))
                        .unwrap_or_default();
                    if let Some(p) = &self.project {
                        self.training.refresh_runs(p.dir());
                    }
                    let latest = self.training.runs.first().cloned();
                    egui::Panel::bottom("prediction").show(ui, |ui| {
                        self.predict.ui(
                            ui,
                            record,
                            image,
                            &self.settings.model_folder,
                            latest.as_deref(),
                            &mut self.settings.verify_threshold,
                            &mut self.commands,
                        );
                    });
                    self.fields.ui(ui, record, &field, &mut self.commands);
                }
                None => {
                    ui.label("No record selected.");
                }
            });
        egui::CentralPanel::default().show(ui, |ui| {
            self.toolbar_ui(ui);
            let (Some(record), Some(project)) = (&self.record, &self.project) else {
                let opening = self
                    .opening
                    .as_ref()
                    .map(|o| format!("Opening {}: {}…", o.dir.display(), o.describe()));
                ui.centered_and_justified(|ui| {
                    ui.label(opening.unwrap_or_else(|| {
                        "Open a project: File > Open project, or File > Open the sample project."
                            .into()
                    }));
                });
                return;
            };
            let marker_removed = self.settings.layers.marker_removed;
            let key = image_key(project, record, marker_removed);
            let slot = self.images.get(ui.ctx(), &key);
            let predicted = self.predict.predicted(record);
            let input = CanvasInput {
                slot,
                size: [record.width, record.height],
                detected: record.get_box(BoxSource::Detected).map(|b| b.coords),
                corrected: record.get_box(BoxSource::Corrected).map(|b| b.coords),
                predicted,
                layers: self.settings.layers,
                identity: (record.id, marker_removed),
            };
            if let Some(b) = self.canvas.ui(ui, &input) {
                self.commands.push(Command::SetBox(Some(b)));
            }
        });
    }

    fn toolbar_ui(&mut self, ui: &mut Ui) {
        ui.horizontal_wrapped(|ui| {
            if ui
                .button("Fit")
                .on_hover_text("Fit the image to the canvas (0)")
                .clicked()
            {
                self.commands.push(Command::Fit);
            }
            if ui
                .button("1:1")
                .on_hover_text("One image pixel per screen pixel (1)")
                .clicked()
            {
                self.commands.push(Command::OneToOne);
            }
            ui.separator();
            ui.label("W/L")
                .on_hover_text("Window/level of grey images; right-drag on the image to adjust");
            match self.current_values() {
                Some(values) => self.value_window_ui(ui, &values),
                None => {
                    for (name, preset) in WINDOW_PRESETS {
                        if ui
                            .selectable_label(self.canvas.window == preset, name)
                            .on_hover_text("Window/level preset for grey images")
                            .clicked()
                        {
                            self.canvas.window = preset;
                        }
                    }
                }
            }
            ui.separator();
            let l = &mut self.settings.layers;
            ui.toggle_value(
                &mut l.detected,
                RichText::new("detected").color(canvas::DETECTED_COLOUR),
            )
            .on_hover_text("Show the detected green ROI");
            ui.toggle_value(
                &mut l.corrected,
                RichText::new("corrected").color(canvas::CORRECTED_COLOUR),
            )
            .on_hover_text("Show the corrected box");
            ui.toggle_value(
                &mut l.predicted,
                RichText::new("predicted").color(canvas::PREDICTED_COLOUR),
            )
            .on_hover_text("Show the predicted box and its score");
            ui.toggle_value(&mut l.marker_removed, "marker removed")
                .on_hover_text("Show the image with the green outline removed (M)");
            ui.separator();
            if ui
                .button("Reset to detected")
                .on_hover_text("Set the corrected box to the detected one (D)")
                .clicked()
            {
                self.commands.push(Command::ResetToDetected);
            }
            if ui
                .button("Delete box")
                .on_hover_text("Remove the corrected box (Delete)")
                .clicked()
            {
                self.commands.push(Command::SetBox(None));
            }
            if ui.button("Undo").on_hover_text("Undo (Ctrl+Z)").clicked() {
                self.commands.push(Command::Undo);
            }
            if ui
                .button("Redo")
                .on_hover_text("Redo (Ctrl+Shift+Z)")
                .clicked()
            {
                self.commands.push(Command::Redo);
            }
        });
    }
}

impl Workbench {
    /// The shown image's DICOM modality values, once decoded (greyscale DICOM only).
    fn current_values(&self) -> Option<std::sync::Arc<crate::data::dicom::GreyValues>> {
        let (Some(record), Some(project)) = (&self.record, &self.project) else {
            return None;
        };
        let key = image_key(project, record, self.settings.layers.marker_removed);
        match self.images.peek(&key) {
            Some(images::Slot::Ready(d)) => d.values.clone(),
            _ => None,
        }
    }

    /// Window/level of a DICOM on its modality values: presets and the current window.
    fn value_window_ui(&mut self, ui: &mut Ui, values: &crate::data::dicom::GreyValues) {
        let current = self
            .canvas
            .raw_window
            .unwrap_or_else(|| values.default_window());
        let units = if values.modality.as_deref() == Some("CT") {
            " HU"
        } else {
            ""
        };
        for (name, preset) in canvas::value_presets(values) {
            if ui
                .selectable_label(current == preset, name)
                .on_hover_text(format!(
                    "Window centre {:.0}{units}, width {:.0}{units}, on the DICOM's own values",
                    preset.0, preset.1
                ))
                .clicked()
            {
                self.canvas.raw_window = Some(preset);
            }
        }
        ui.label(format!("C {:.0} W {:.0}{units}", current.0, current.1))
            .on_hover_text(
                "Window centre and width on the DICOM's modality values (16-bit range, \
                 Hounsfield units for CT); right-drag on the image to adjust",
            );
    }
}

/// The cache key of a record's image as shown: the original or the marker-removed one.
fn image_key(project: &Project, record: &StoredRecord, marker_removed: bool) -> ImageKey {
    let path = if marker_removed {
        project.training_image_path(record)
    } else {
        project.image_path(record)
    };
    ImageKey { path, thumb: false }
}

fn describe(edit: &Edit) -> String {
    match edit {
        Edit::SetBox {
            coords: Some(b), ..
        } => format!("box [{:.3}, {:.3}, {:.3}, {:.3}]", b[0], b[1], b[2], b[3]),
        Edit::SetBox { coords: None, .. } => "box removed".into(),
        Edit::SetStatus { status } => format!("status {}", status.as_str()),
        Edit::SetField { name, .. } => format!("field {name}"),
        Edit::SetDiagnosis { .. } => "diagnosis".into(),
        Edit::SetSplit { split } => format!("split {}", split.map_or("none", |s| s.as_str())),
    }
}
