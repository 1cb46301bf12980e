//! The workbench's record list and field edits through its real UI (egui_kittest, no display):
//! Enter saves a field (Shift+Enter is a new line in a multi-line one), no trailing whitespace is
//! saved, an edit in progress survives Ctrl+S and closing the window, "Go to #", the natural
//! sort order, the list computed on a worker, a project opened on a worker, and the selection
//! kept in view. Every edit is checked by reading the project store back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui::{Key, Modifiers, Vec2, ViewportEvent, ViewportId};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use roiscope::app::browser::{Filters, Row, SortBy};
use roiscope::app::sample::ensure_sample_project;
use roiscope::app::settings::Settings;
use roiscope::app::view::{Rows, View};
use roiscope::app::{Command, Workbench};
use roiscope::data::store::{Project, ReviewStatus};

const DIAGNOSIS: &str = "Clinical Diagnosis Tips (diagnosis target)";

fn sample_project(tmp: &Path) -> PathBuf {
    ensure_sample_project(tmp.join("project")).expect("the sample project prepares")
}

fn harness(project: &Path) -> Harness<'static, Workbench> {
    let mut wb = Workbench::new(Settings::default());
    wb.open_project(project);
    assert!(wb.project.is_some(), "{:?}", wb.message);
    let mut h = Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .build_ui_state(|ui, wb: &mut Workbench| wb.ui(ui), wb);
    h.run_steps(3);
    h
}

fn step_until(h: &mut Harness<'static, Workbench>, what: &str, done: impl Fn(&Workbench) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stored_field(project: &Path, id: i64, name: &str) -> String {
    let p = Project::open(project).unwrap();
    p.record(id).unwrap().fields.unwrap()[name]
        .as_str()
        .unwrap()
        .to_string()
}

fn current_id(h: &Harness<'static, Workbench>) -> i64 {
    h.state().record.as_ref().unwrap().id
}

fn edit_count(project: &Path) -> usize {
    Project::open(project).unwrap().history(None).unwrap().len()
}

fn focus_and_type(h: &mut Harness<'static, Workbench>, role: Role, label: &str, text: &str) {
    h.get_by_role_and_label(role, label).focus();
    h.run_steps(2);
    h.get_by_role_and_label(role, label).type_text(text);
    h.run_steps(2);
}

#[test]
fn enter_saves_a_field_and_shift_enter_is_a_new_line() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let id = current_id(&h);
    let old = stored_field(&project, id, "Organ");

    // A single-line field: Enter saves it, without a newline, and leaves the field.
    focus_and_type(&mut h, Role::TextInput, "Organ", " (left)");
    h.key_press(Key::Enter);
    h.run_steps(3);
    assert_eq!(stored_field(&project, id, "Organ"), format!("{old} (left)"));
    assert!(
        !h.ctx.memory(|m| m.focused().is_some()),
        "Enter left the field"
    );

    // The diagnosis: Shift+Enter starts a new line, Enter saves.
    let diag = stored_field(&project, id, "Clinical Diagnosis Tips");
    focus_and_type(&mut h, Role::MultilineTextInput, DIAGNOSIS, " First.");
    h.key_press_modifiers(Modifiers::SHIFT, Key::Enter);
    h.run_steps(1);
    h.get_by_role_and_label(Role::MultilineTextInput, DIAGNOSIS)
        .type_text("Second.");
    h.run_steps(1);
    let before = edit_count(&project);
    h.key_press(Key::Enter);
    h.run_steps(3);
    assert_eq!(
        stored_field(&project, id, "Clinical Diagnosis Tips"),
        format!("{diag} First.\nSecond.")
    );
    assert_eq!(edit_count(&project), before + 1, "one edit for the field");
}

#[test]
fn trailing_whitespace_is_not_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let id = current_id(&h);
    let old = stored_field(&project, id, "ROI Size");
    let before = edit_count(&project);

    // Only spaces added: nothing to save.
    focus_and_type(&mut h, Role::TextInput, "ROI Size", "   ");
    h.key_press(Key::Enter);
    h.run_steps(3);
    assert_eq!(edit_count(&project), before, "{:?}", h.state().message);
    assert_eq!(stored_field(&project, id, "ROI Size"), old);

    // A real change with a trailing space: saved without it.
    focus_and_type(&mut h, Role::TextInput, "ROI Size", " or so ");
    h.key_press(Key::Enter);
    h.run_steps(3);
    assert_eq!(
        stored_field(&project, id, "ROI Size"),
        format!("{old} or so")
    );
    assert_eq!(edit_count(&project), before + 1);
}

#[test]
fn an_edit_in_progress_is_saved_by_ctrl_s_a_record_switch_and_closing_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let first = current_id(&h);
    let old = stored_field(&project, first, "Texture");

    // Ctrl+S with the field still focused.
    focus_and_type(&mut h, Role::TextInput, "Texture", " A");
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.run_steps(3);
    assert_eq!(stored_field(&project, first, "Texture"), format!("{old} A"));

    // The window closes while the field has the keyboard.
    focus_and_type(&mut h, Role::TextInput, "Texture", " B");
    assert!(h.ctx.memory(|m| m.focused().is_some()));
    h.input_mut()
        .viewports
        .entry(ViewportId::ROOT)
        .or_default()
        .events
        .push(ViewportEvent::Close);
    h.step();
    assert_eq!(
        stored_field(&project, first, "Texture"),
        format!("{old} A B")
    );

    // PageDown does nothing while typing; a click on another record switches and saves.
    focus_and_type(&mut h, Role::TextInput, "Texture", " C");
    h.state_mut().commands.push(Command::Select(1));
    h.run_steps(3);
    assert_ne!(current_id(&h), first);
    assert_eq!(
        stored_field(&project, first, "Texture"),
        format!("{old} A B C")
    );
}

#[test]
fn go_to_a_record_by_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let last = h.state().rows.last().unwrap().id;

    // Ctrl+G puts the keyboard in the field; the id and Enter show the record.
    h.key_press_modifiers(Modifiers::COMMAND, Key::G);
    h.run_steps(2);
    h.get_by_role_and_label(Role::TextInput, "Go to #")
        .type_text(&last.to_string());
    h.run_steps(1);
    h.key_press(Key::Enter);
    h.run_steps(3);
    assert_eq!(current_id(&h), last);
    // It is in the list's view: its row is drawn (the list shows ~10 of the 24 rows).
    let name = row_label(&h, last);
    h.get_by_label(&name);

    // Hidden by a filter: the filters are cleared to show it.
    h.state_mut().browser.filters.status = Some(ReviewStatus::Rejected);
    h.run_steps(2);
    h.state_mut().commands.push(Command::GoTo(3));
    h.run_steps(3);
    assert_eq!(current_id(&h), 3);
    assert_eq!(h.state().browser.filters, Filters::default());
    let (msg, _) = h.state().message.clone().unwrap();
    assert!(msg.contains("filters hid it"), "{msg}");

    // An id that is not there: a message, the selection stays.
    h.state_mut().commands.push(Command::GoTo(9999));
    h.run_steps(2);
    let (msg, error) = h.state().message.clone().unwrap();
    assert!(error && msg.contains("no record #9999"), "{msg}");
    assert_eq!(current_id(&h), 3);
}

fn row_label(h: &Harness<'static, Workbench>, id: i64) -> String {
    let row = h.state().rows.iter().find(|r| r.id == id).unwrap();
    let name = row.image.rsplit('/').next().unwrap();
    format!("#{id} {name}")
}

#[test]
fn the_selection_stays_in_view_when_the_order_changes_and_after_opening() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let other = ensure_sample_project(tmp.path().join("other")).unwrap();
    let mut h = harness(&project);
    let last = h.state().rows.last().unwrap().id;
    h.state_mut().commands.push(Command::GoTo(last));
    h.run_steps(3);
    // The last record by id is first by image name reversed: sort by image, by diagnosis.
    for sort in [SortBy::Diagnosis, SortBy::Image, SortBy::Status, SortBy::Id] {
        h.state_mut().browser.sort = sort;
        h.run_steps(3);
        let name = row_label(&h, last);
        assert!(
            h.query_by_label(&name).is_some(),
            "{name} out of view sorted {sort:?}"
        );
    }

    // File > Open reads the other project on a worker; its first record is selected and in view
    // even though the list was scrolled to the end.
    h.state_mut()
        .commands
        .push(Command::OpenProject(other.clone()));
    h.step();
    assert!(
        h.state().opening.is_some()
            || h.state().project.as_ref().map(|p| p.dir()) == Some(other.as_path()),
        "the open runs on a worker"
    );
    step_until(&mut h, "the other project", |wb| {
        wb.project.as_ref().map(|p| p.dir()) == Some(other.as_path())
    });
    h.run_steps(3);
    let first = h.state().rows[0].id;
    assert_eq!(current_id(&h), first);
    let name = row_label(&h, first);
    assert!(h.query_by_label(&name).is_some(), "{name} out of view");
    let (msg, error) = h.state().message.clone().unwrap();
    assert!(!error && msg.contains("24 records"), "{msg}");
}

fn row(id: i64, diagnosis: &str, status: ReviewStatus) -> Arc<Row> {
    Arc::new(Row {
        id,
        image: format!("images/img_{id}.png"),
        status,
        split: None,
        has_box: id % 2 == 0,
        corrected: false,
        diagnosis: diagnosis.into(),
        haystack: format!("img_{id} {diagnosis}").to_lowercase(),
        thumb: PathBuf::new(),
        predicted: None,
    })
}

#[test]
fn sorting_by_diagnosis_and_image_puts_numbers_in_number_order() {
    let rows: Rows = vec![
        row(1, "finding 41029: cyst", ReviewStatus::Unreviewed),
        row(2, "finding 4102: cyst", ReviewStatus::Accepted),
        row(3, "Finding 10", ReviewStatus::Unreviewed),
        row(4, "finding 9", ReviewStatus::Rejected),
        row(10, "finding 4102: cyst", ReviewStatus::Unreviewed),
    ];
    let mut b = roiscope::app::browser::Browser {
        sort: SortBy::Diagnosis,
        ..Default::default()
    };
    let ids = |b: &roiscope::app::browser::Browser| -> Vec<i64> {
        b.visible(&rows).iter().map(|&i| rows[i].id).collect()
    };
    // Ties (2 and 10) by id.
    assert_eq!(ids(&b), [4, 3, 2, 10, 1]);
    b.sort = SortBy::Image;
    assert_eq!(ids(&b), [1, 2, 3, 4, 10], "img_10 after img_4");
    b.filters.text = "CYST".into();
    assert_eq!(ids(&b), [1, 2, 10]);
}

/// Above its inline limit the list is computed on a worker: the old list stays until the new
/// one arrives, and the result is the same as computing it in place.
#[test]
fn a_large_list_is_computed_on_a_worker_with_the_same_result() {
    let statuses = ReviewStatus::ALL;
    let rows: Rows = (1..=3000)
        .map(|i| {
            row(
                i,
                &format!("finding {}", (i * 7919) % 5000),
                statuses[(i % 4) as usize],
            )
        })
        .collect();
    let mut view = View::default();
    view.inline_limit = 100;
    let mut filters = Filters::default();
    let wait = |view: &mut View, filters: &Filters, sort: SortBy| {
        view.refresh(&rows, 1, filters, sort, None);
        assert!(view.busy(), "computed on a worker");
        let start = Instant::now();
        while !view.is_current(filters, sort, 1) {
            assert!(start.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(2));
            view.refresh(&rows, 1, filters, sort, None);
        }
    };
    for sort in [SortBy::Diagnosis, SortBy::Status, SortBy::Image] {
        for text in ["", "finding 12", "nothing like this"] {
            filters.text = text.into();
            filters.boxes = roiscope::app::browser::BoxFilter::With;
            wait(&mut view, &filters, sort);
            let b = roiscope::app::browser::Browser {
                filters: filters.clone(),
                sort,
                ..Default::default()
            };
            assert_eq!(
                view.order(),
                b.visible(&rows).as_slice(),
                "{sort:?} {text:?}"
            );
            assert_eq!(view.counts(), [750, 750, 750, 750]);
        }
    }
}

/// The Training tab from the window alone: Start says inline why it is off, a demo model is
/// created in the app (init-model's engine on a worker), its check line summarises it, and
/// Start is on.
#[test]
fn a_demo_model_made_in_the_window_makes_start_possible() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    h.state_mut().model_folder.demo_parent = Some(tmp.path().join("models"));
    h.state_mut().settings.model_folder.clear();
    h.state_mut().tab = roiscope::app::Tab::Training;
    h.run_steps(3);
    h.get_by_label("Start needs a model folder: Browse for one above, or create a demo model");
    use egui_kittest::kittest::NodeT;
    assert!(h.get_by_label("Start").accesskit_node().is_disabled());

    h.get_by_label("Create a demo model").click();
    h.run_steps(2);
    step_until(&mut h, "the demo model", |wb| !wb.model_folder.busy());
    h.run_steps(3);
    let folder = h.state().settings.model_folder.clone();
    assert_eq!(
        Path::new(&folder),
        tmp.path().join("models/demo-tiny"),
        "{:?}",
        h.state().model_folder.created
    );
    h.get_by_label_contains("text 2 layers x 64");
    assert!(!h.get_by_label("Start").accesskit_node().is_disabled());
    assert!(h.query_by_label_contains("Start needs").is_none());
}
