//! The workbench driven through its real UI (egui_kittest, no display): box editing with the
//! mouse and keys, undo/redo, switching records, editing a field, reviewing, and bad input. Every
//! check reads the project store back, since that is what the user keeps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "support/app.rs"]
mod app_support;

use app_support::step_until;
use egui::accesskit::Role;
use egui::{Key, Modifiers, Pos2, Vec2};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use roiscope::app::sample::ensure_sample_project;
use roiscope::app::settings::Settings;
use roiscope::app::Workbench;
use roiscope::data::store::{BoxSource, Project, ReviewStatus};

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

/// Runs frames until `done` holds (the decoder and trainer threads repaint on their own).

fn select_where(
    h: &mut Harness<'static, Workbench>,
    pick: impl Fn(&roiscope::app::browser::Row) -> bool,
) -> i64 {
    let i = h
        .state()
        .rows
        .iter()
        .position(|r| pick(r))
        .expect("a matching record");
    h.state_mut()
        .commands
        .push(roiscope::app::Command::Select(i));
    h.run_steps(3);
    h.state().rows[i].id
}

fn corrected_px(project: &Path, id: i64) -> Option<[f64; 4]> {
    let p = Project::open(project).unwrap();
    let r = p.record(id).unwrap();
    r.get_box(BoxSource::Corrected).map(|b| {
        let (w, h) = (r.width as f64, r.height as f64);
        [
            b.coords[0] * w,
            b.coords[1] * h,
            b.coords[2] * w,
            b.coords[3] * h,
        ]
        .map(|v| (v * 100.0).round() / 100.0)
    })
}

fn edit_count(project: &Path) -> usize {
    Project::open(project).unwrap().history(None).unwrap().len()
}

/// A left-button drag in image pixel coordinates, through several pointer moves.
fn drag(h: &mut Harness<'static, Workbench>, from: [f32; 2], to: [f32; 2]) {
    let a = h.state().canvas.to_screen(from);
    let b = h.state().canvas.to_screen(to);
    h.hover_at(a);
    h.step();
    h.drag_at(a);
    h.step();
    for k in 1..=4 {
        let t = k as f32 / 4.0;
        h.hover_at(Pos2::new(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t));
        h.step();
    }
    h.drop_at(b);
    h.run_steps(2);
}

#[test]
fn draw_move_resize_nudge_undo_redo_a_box() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    // A record without a detected box, so the first drag draws.
    let id = select_where(&mut h, |r| !r.has_box);
    assert_eq!(corrected_px(&project, id), None);
    let before = edit_count(&project);

    drag(&mut h, [20.0, 30.0], [80.0, 70.0]);
    assert_eq!(
        corrected_px(&project, id),
        Some([20.0, 30.0, 80.0, 70.0]),
        "{:?}",
        h.state().message
    );
    assert_eq!(edit_count(&project), before + 1, "one drag is one edit");

    // Move: drag from inside the box.
    drag(&mut h, [50.0, 50.0], [60.0, 55.0]);
    assert_eq!(corrected_px(&project, id), Some([30.0, 35.0, 90.0, 75.0]));
    assert_eq!(edit_count(&project), before + 2);

    // Resize by the bottom-right handle.
    drag(&mut h, [90.0, 75.0], [100.0, 95.0]);
    assert_eq!(corrected_px(&project, id), Some([30.0, 35.0, 100.0, 95.0]));

    // Resize by the left edge's handle (the middle of the left side).
    drag(&mut h, [30.0, 65.0], [25.0, 65.0]);
    assert_eq!(corrected_px(&project, id), Some([25.0, 35.0, 100.0, 95.0]));

    // Keys: 1 px, 10 px with Shift, Ctrl resizes.
    h.key_press(Key::ArrowRight);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([26.0, 35.0, 101.0, 95.0]));
    h.key_press_modifiers(Modifiers::SHIFT, Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([26.0, 45.0, 101.0, 105.0]));
    h.key_press_modifiers(Modifiers::COMMAND, Key::ArrowRight);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([26.0, 45.0, 102.0, 105.0]));

    // Undo twice, redo once.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([26.0, 45.0, 101.0, 105.0]));
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([26.0, 35.0, 101.0, 95.0]));
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([26.0, 45.0, 101.0, 105.0]));

    // The edits survive at every zoom: zoom in at the cursor, then move by 5 image pixels.
    let centre = h.state().canvas.to_screen([60.0, 70.0]);
    h.hover_at(centre);
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: Vec2::new(0.0, 400.0),
        modifiers: Modifiers::NONE,
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
    });
    h.run_steps(6);
    assert!(
        h.state().canvas.zoom() > 1.2,
        "zoomed in: {}",
        h.state().canvas.zoom()
    );
    drag(&mut h, [60.0, 70.0], [65.0, 70.0]);
    assert_eq!(corrected_px(&project, id), Some([31.0, 45.0, 106.0, 105.0]));

    // Delete removes the correction; undo brings it back.
    h.key_press(Key::Delete);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), None);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Y);
    h.run_steps(2);
    assert_eq!(
        corrected_px(&project, id),
        None,
        "nothing to redo after a new edit"
    );
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    assert_eq!(corrected_px(&project, id), Some([31.0, 45.0, 106.0, 105.0]));
}

#[test]
fn reset_to_detected_copies_the_detected_box() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let id = select_where(&mut h, |r| r.has_box);
    h.key_press(Key::D);
    h.run_steps(2);
    let p = Project::open(&project).unwrap();
    let r = p.record(id).unwrap();
    assert_eq!(
        r.get_box(BoxSource::Corrected).map(|b| b.coords),
        r.get_box(BoxSource::Detected).map(|b| b.coords)
    );
}

#[test]
fn switch_records_edit_a_field_and_review() {
    // Chinese is typed below; the harness fails on any glyph it cannot draw.
    assert!(
        roiscope::app::fonts::find_cjk_font().is_some(),
        "no CJK font on this machine: ./scripts/system-deps installs fonts-wqy-microhei"
    );
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let first = h.state().record.as_ref().unwrap().id;
    h.key_press(Key::PageDown);
    h.run_steps(2);
    let second = h.state().record.as_ref().unwrap().id;
    assert_ne!(first, second);
    h.key_press(Key::K);
    h.run_steps(2);
    assert_eq!(h.state().record.as_ref().unwrap().id, first);

    // Edit the Modality field through its text box; leaving the field saves it.
    let old = h.state().record.as_ref().unwrap().fields.as_ref().unwrap()["Modality"]
        .as_str()
        .unwrap()
        .to_string();
    h.get_by_role_and_label(Role::TextInput, "Modality").focus();
    h.run_steps(3);
    h.get_by_role_and_label(Role::TextInput, "Modality")
        .type_text(" 复核");
    h.run_steps(3);
    h.key_press(Key::Escape);
    h.run_steps(3);
    let p = Project::open(&project).unwrap();
    let stored = p.record(first).unwrap().fields.unwrap()["Modality"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stored, format!("{old} 复核"));

    // Review with the keyboard, in queue mode: the next unreviewed record comes up.
    h.state_mut().fields.queue_mode = true;
    h.key_press(Key::A);
    h.run_steps(2);
    assert_eq!(
        Project::open(&project)
            .unwrap()
            .record(first)
            .unwrap()
            .status,
        ReviewStatus::Accepted
    );
    let next = h.state().record.as_ref().unwrap();
    assert_ne!(next.id, first);
    assert_eq!(next.status, ReviewStatus::Unreviewed);
    h.get_by_label("Needs fix (F)").click();
    h.run_steps(2);
    let p = Project::open(&project).unwrap();
    assert_eq!(
        p.record(next_id(&p, first)).unwrap().status,
        ReviewStatus::NeedsFix
    );
}

/// The record after `first` that the queue moved to (the next one by id).
fn next_id(p: &Project, first: i64) -> i64 {
    p.history(None)
        .unwrap()
        .iter()
        .rev()
        .find(|e| e.record_id != first)
        .map(|e| e.record_id)
        .unwrap()
}

#[test]
fn filters_narrow_the_list() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let all = h.state().rows.len();
    h.state_mut().browser.filters.boxes = roiscope::app::browser::BoxFilter::Without;
    h.run_steps(2);
    assert_eq!(h.state().browser.visible(&h.state().rows).len(), 3);
    h.state_mut().browser.filters.boxes = roiscope::app::browser::BoxFilter::Any;
    h.get_by_role_and_label(Role::TextInput, "Search").focus();
    h.run_steps(3);
    h.get_by_role_and_label(Role::TextInput, "Search")
        .type_text("retina");
    h.run_steps(2);
    let shown = h.state().browser.visible(&h.state().rows).len();
    assert!(shown >= 1 && shown < all, "{shown} of {all}");

    // Sorting by status puts the unreviewed records first; PageDown follows the sorted list.
    h.state_mut().browser.filters.text.clear();
    h.state_mut().browser.sort = roiscope::app::browser::SortBy::Status;
    h.run_steps(2);
    let order = h.state().browser.visible(&h.state().rows);
    let statuses: Vec<_> = order.iter().map(|&i| h.state().rows[i].status).collect();
    assert_eq!(statuses[0], ReviewStatus::Unreviewed);
    assert_eq!(*statuses.last().unwrap(), ReviewStatus::NeedsFix);
    assert_eq!(order.len(), all);
}

#[test]
fn thumbnails_and_images_decode_off_the_ui_thread_and_bad_images_become_error_tiles() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    // Break one image: the app must show an error tile and stay usable.
    let p = Project::open(&project).unwrap();
    let r = p.record(1).unwrap();
    std::fs::write(tmp.path().join("broken.jpg"), b"not a jpeg").unwrap();
    let broken = roiscope::app::images::ImageKey {
        path: tmp.path().join("broken.jpg"),
        thumb: false,
    };
    let good = roiscope::app::images::ImageKey {
        path: p.image_path(&r),
        thumb: false,
    };
    let mut h = harness(&project);
    let ctx = h.ctx.clone();
    h.state_mut().images.get(&ctx, &broken);
    h.state_mut().images.get(&ctx, &good);
    step_until(&mut h, "the decodes", Duration::from_secs(30), |wb| {
        wb.images.idle()
    });
    use roiscope::app::images::Slot;
    assert!(matches!(
        h.state_mut().images.get(&ctx, &broken),
        Slot::Failed(_)
    ));
    assert!(matches!(
        h.state_mut().images.get(&ctx, &good),
        Slot::Ready(_)
    ));
}

/// Flipping through many images keeps the cache within its bound, decodes that finish after
/// their image was dropped make no texture, and nothing is left queued.
#[test]
fn the_image_cache_stays_bounded_while_flipping() {
    use roiscope::app::images::{ImageCache, ImageKey, MAX_FULL};
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let p = Project::open(&project).unwrap();
    let mut images = Vec::new();
    p.for_each_record(roiscope::data::store::RecordFilter::All, |r| {
        images.push(p.image_path(&r));
        Ok(())
    })
    .unwrap();
    // Distinct paths (so distinct cache entries) for the same few real images.
    let keys: Vec<ImageKey> = (0..5 * MAX_FULL)
        .map(|i| {
            let link = tmp.path().join(format!("flip_{i:03}.jpg"));
            std::fs::copy(&images[i % images.len()], &link).unwrap();
            ImageKey {
                path: link,
                thumb: false,
            }
        })
        .collect();
    let ctx = egui::Context::default();
    let mut cache = ImageCache::new(2);
    for key in &keys {
        cache.get(&ctx, key);
        cache.poll(&ctx);
        let s = cache.stats();
        assert!(s.full <= MAX_FULL && s.textures <= MAX_FULL, "{s:?}");
    }
    let start = Instant::now();
    while !cache.idle() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "decodes never ended"
        );
        cache.get(&ctx, keys.last().unwrap());
        cache.poll(&ctx);
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = cache.stats();
    assert!(s.full <= MAX_FULL && s.textures <= MAX_FULL, "{s:?}");
    assert_eq!(s.queued, 0);
    assert!(
        ctx.tex_manager().read().num_allocated() <= MAX_FULL + 1,
        "textures left behind"
    );
    // The last image asked for is there; the first ones were dropped.
    assert!(matches!(
        cache.peek(keys.last().unwrap()),
        Some(roiscope::app::images::Slot::Ready(_))
    ));
    assert!(cache.peek(&keys[0]).is_none());
}

#[test]
fn a_missing_project_is_a_message_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    h.state_mut()
        .commands
        .push(roiscope::app::Command::OpenProject(
            tmp.path().join("nowhere"),
        ));
    // Opened on a worker thread: the answer comes a few frames later.
    h.step();
    step_until(&mut h, "the answer", Duration::from_secs(30), |wb| {
        wb.opening.is_none() && wb.message.is_some()
    });
    let (msg, error) = h.state().message.clone().unwrap();
    assert!(error && msg.contains("not a roiscope project"), "{msg}");
    // The open project stays usable.
    assert!(h.state().project.is_some() && h.state().record.is_some());
}

/// The path fields of File > New project and File > Open project keep their width in a
/// 1280 x 720 window: windows sized by their first frame had squeezed them to ~40 px (New
/// project) and ~320 px (Open project, its wrapped note setting the width).
#[test]
fn dialog_path_fields_are_wide_at_1280_by_720() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut wb = Workbench::new(Settings::default());
    wb.open_project(&project);
    wb.dialogs.service = Err("No file dialog on this system: type the path.".into());
    wb.new_project.open = true;
    let mut h = Harness::builder()
        .with_size(Vec2::new(1280.0, 720.0))
        .build_ui_state(|ui, wb: &mut Workbench| wb.ui(ui), wb);
    h.run_steps(3);
    for label in ["Records", "Images folder", "Project folder"] {
        let w = h
            .get_by_role_and_label(Role::TextInput, label)
            .rect()
            .width();
        assert!(w >= 380.0, "New project: {label} is {w} px wide");
    }
    h.state_mut().new_project.open = false;
    h.run_steps(1);
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open project…").click();
    h.run_steps(3);
    let w = h
        .get_by_role_and_label(Role::TextInput, "Path")
        .rect()
        .width();
    assert!(w >= 400.0, "Open project: Path is {w} px wide");
}

#[test]
fn a_new_project_is_prepared_in_the_background_and_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    let sample = roiscope::data::sample::sample_dir();
    let fresh = tmp.path().join("fresh");
    {
        let np = &mut h.state_mut().new_project;
        np.open = true;
        np.input = sample.join("raw_data.json").display().to_string();
        np.images = sample.display().to_string();
        np.project = fresh.display().to_string();
    }
    h.run_steps(2);
    h.get_by_label("Create").click();
    h.run_steps(2);
    step_until(&mut h, "the import", Duration::from_secs(120), |wb| {
        wb.project
            .as_ref()
            .is_some_and(|p| p.dir() == fresh.as_path())
    });
    assert_eq!(h.state().rows.len(), 24);
    assert!(matches!(&h.state().new_project.result, Some(Ok(m)) if m.contains("24 records kept")));
}

/// File > Open project where this system has no file dialog service: the window says so, its
/// Browse button is off, and the typed path opens the project.
#[test]
fn open_project_falls_back_to_the_typed_path_without_a_dialog_service() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let other = ensure_sample_project(tmp.path().join("other")).unwrap();
    let mut h = harness(&project);
    h.state_mut().dialogs.service = Err("No file dialog on this system: type the path.".into());
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open project…").click();
    h.run_steps(3);
    assert!(h.state().dialogs.waiting().is_none());
    h.get_by_label("No file dialog on this system: type the path.");
    use egui_kittest::kittest::NodeT;
    assert!(h.get_by_label("Browse…").accesskit_node().is_disabled());
    h.get_by_role_and_label(Role::TextInput, "Path").focus();
    h.run_steps(1);
    h.get_by_role_and_label(Role::TextInput, "Path")
        .type_text(other.display().to_string().as_str());
    h.run_steps(2);
    h.get_by_label("Open").click();
    h.run_steps(3);
    step_until(&mut h, "the project read", Duration::from_secs(30), |wb| {
        wb.opening.is_none()
    });
    let dir = h.state().project.as_ref().map(|p| p.dir().to_path_buf());
    assert_eq!(dir.as_deref(), Some(other.as_path()));
}

/// Where a dialog is tried but none can be shown (no portal, no zenity: this test only runs
/// where the probe finds neither, so it never pops a real dialog up), rfd's answer comes back
/// from its worker thread as "nothing", the window keeps running and says to type the path.
#[test]
fn a_file_dialog_that_cannot_open_leaves_the_typed_path() {
    if roiscope::app::file_dialog::dialog_service().is_ok() {
        eprintln!("skipped: this machine has a file dialog service, which would open a dialog");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut h = harness(&project);
    h.state_mut().dialogs.service = Ok(());
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open project…").click();
    h.run_steps(1);
    // The dialog runs on its own thread: frames go on meanwhile.
    step_until(&mut h, "rfd's answer", Duration::from_secs(60), |wb| {
        wb.dialogs.waiting().is_none()
    });
    h.run_steps(2);
    let (msg, _) = h.state().message.clone().unwrap();
    assert!(msg.contains("type the path"), "{msg}");
    h.get_by_label("Path");
    assert!(h.state().project.is_some());
}

/// Window/level of a 16-bit CT works on its Hounsfield values, not on the 8-bit rendering:
/// values the file's window maps to one grey level are told apart by a narrow window, the
/// file's own window gives back the decoder's rendering, and the toolbar's CT presets set the
/// window on the values.
#[test]
fn dicom_window_level_acts_on_the_sixteen_bit_values() {
    use roiscope::app::images::{window_values, Slot};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/CT_small.dcm"),
        data.join("ct.dcm"),
    )
    .unwrap();
    let records = serde_json::json!([{
        "messages": [
            {"role": "user", "content": "<image>Describe this CT."},
            {"role": "assistant", "content": {"extractions": {
                "Modality": "CT", "Clinical Diagnosis Tips": "A test slice."
            }}}
        ],
        "images": ["ct.dcm"]
    }]);
    std::fs::write(data.join("raw_data.json"), records.to_string()).unwrap();
    let project = tmp.path().join("project");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_roiscope"))
        .args(["prepare", "--input"])
        .arg(data.join("raw_data.json"))
        .arg("--images")
        .arg(&data)
        .arg("--project")
        .arg(&project)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");

    let mut h = harness(&project);
    step_until(&mut h, "the CT to decode", Duration::from_secs(30), |wb| {
        wb.images.idle()
    });
    h.run_steps(2);
    let wb = h.state();
    let key = roiscope::app::images::ImageKey {
        path: wb
            .project
            .as_ref()
            .unwrap()
            .image_path(wb.record.as_ref().unwrap()),
        thumb: false,
    };
    let (values, rendered) = match wb.images.peek(&key) {
        Some(Slot::Ready(d)) => (d.values.clone().expect("modality values"), d.pixels.clone()),
        Some(Slot::Failed(e)) => panic!("the CT did not decode: {e}"),
        _ => panic!("the CT is not in the cache: {key:?}"),
    };
    assert_eq!(values.modality.as_deref(), Some("CT"));
    assert!(
        values.range.0 < 0.0,
        "HU below zero expected: {:?}",
        values.range
    );

    // The file's window reproduces the 8-bit rendering.
    let (c, w) = values.default_window();
    let same = window_values(&values, c, w);
    assert_eq!(same.pixels, rendered.pixels);

    // Two different values that share one 8-bit grey level...
    let mut by_level: std::collections::HashMap<u8, (f32, f32)> = Default::default();
    for (v, p) in values.values.iter().zip(&rendered.pixels) {
        let e = by_level.entry(p.r()).or_insert((*v, *v));
        e.0 = e.0.min(*v);
        e.1 = e.1.max(*v);
    }
    let (lo, hi) = by_level
        .values()
        .copied()
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .unwrap();
    assert!(hi > lo, "every grey level holds one value");
    // ...are told apart by a window over just them.
    let narrow = window_values(
        &values,
        f64::from(lo + hi) / 2.0,
        f64::from(hi - lo).max(2.0),
    );
    let level_of = |x: f32| {
        let i = values.values.iter().position(|v| *v == x).unwrap();
        narrow.pixels[i].r()
    };
    assert!(
        level_of(lo) < level_of(hi),
        "values {lo} and {hi}: {} vs {}",
        level_of(lo),
        level_of(hi)
    );

    // The toolbar offers the CT windows and sets them on the values.
    h.get_by_label("Soft tissue").click();
    h.run_steps(2);
    assert_eq!(h.state().canvas.raw_window, Some((40.0, 400.0)));
    h.get_by_label("C 40 W 400 HU");
}
