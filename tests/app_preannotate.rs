//! Model-assisted pre-annotation, evaluation and export from the window, driven through its real
//! UI (egui_kittest) with a tiny random Qwen3-VL trained for two steps (a real model, real
//! SQLite): a run over 20 records is cancelled part-way and resumed to the end; the "predicted",
//! "unverified" and "box far off" filters and the "by model doubt" order agree with what the
//! store holds; Evaluate writes the report `roiscope eval` writes; Export writes what
//! `roiscope export` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "support/app.rs"]
mod app_support;

#[path = "support/pipeline.rs"]
mod support;

use app_support::step_until;
use egui::Vec2;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use roiscope::app::browser::{PredictionFilter, SortBy};
use roiscope::app::doubt::{doubt, FAR_IOU};
use roiscope::app::settings::Settings;
use roiscope::app::{Command, Tab, Workbench};
use roiscope::data::store::{Project, RecordFilter, ReviewStatus, StoredRecord};
use roiscope::eval::metrics::iou;
use serde_json::Value;
use support::{ok, roiscope, trained_project};

const RECORDS: usize = 20;

/// A project of the sample's first 20 records, a tiny model and a run trained for two steps.
fn trained(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample");
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(sample.join("raw_data.json")).unwrap())
            .unwrap();
    let input = dir.join("input.json");
    std::fs::write(&input, serde_json::to_vec(&all[..RECORDS]).unwrap()).unwrap();
    trained_project(dir, &input)
}

fn harness(project: &Path, model: &Path, run: &Path) -> Harness<'static, Workbench> {
    let mut wb = Workbench::new(Settings::default());
    wb.open_project(project);
    assert!(wb.project.is_some(), "{:?}", wb.message);
    assert_eq!(wb.rows.len(), RECORDS);
    wb.settings.model_folder = model.display().to_string();
    wb.batch.preannotate.checkpoint = run.display().to_string();
    // A few tokens per diagnosis keep the test short; the pipeline is the same.
    wb.batch.preannotate.max_new_tokens = 4;
    wb.batch.eval.open_when_done = false;
    wb.tab = Tab::Batch;
    let mut h = Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .build_ui_state(|ui, wb: &mut Workbench| wb.ui(ui), wb);
    h.run_steps(3);
    h
}

fn count(project: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(project.join("roiscope.db")).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The ids the list shows, in its order, once it is computed for what the state asks.
fn shown(h: &mut Harness<'static, Workbench>) -> Vec<i64> {
    h.run_steps(2);
    let wb = h.state();
    wb.browser
        .view
        .order()
        .iter()
        .map(|&i| wb.rows[i].id)
        .collect()
}

#[test]
fn preannotation_over_20_records_cancels_resumes_and_feeds_filters_and_doubt_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model, run) = trained(tmp.path());
    let mut h = harness(&project, &model, &run);
    // One record whose image the model cannot read (its marker-free copy broken): stored as
    // failed, never skipped.
    let store = Project::open(&project).unwrap();
    let broken = all_records(&store)
        .into_iter()
        .rev()
        .find(|r| r.cache_image.is_some())
        .expect("a record with a marker-free copy");
    std::fs::write(store.training_image_path(&broken), b"not an image").unwrap();

    // Start over the list's records (all 20: no filter), cancel after a few.
    h.get_by_label("Pre-annotate").click();
    h.run_steps(2);
    assert!(
        h.state().batch.preannotate.busy(),
        "{:?}",
        h.state().message
    );
    let slowest = step_until(&mut h, "three records", Duration::from_secs(300), |wb| {
        count_rows_predicted(wb) >= 3
    });
    assert!(slowest < Duration::from_secs(2), "a frame took {slowest:?}");
    h.get_by_label("Cancel").click();
    step_until(&mut h, "the cancel", Duration::from_secs(300), |wb| {
        !wb.batch.preannotate.busy()
    });
    let (note, error) = h.state().batch.preannotate.note.clone().unwrap();
    assert!(!error && note.contains("cancelled"), "{note}");
    let runs = h.state().batch.preannotate.runs.clone();
    assert_eq!(runs.len(), 1);
    let first = runs[0].done;
    assert!(
        (3..RECORDS).contains(&first),
        "{first} records before the cancel"
    );
    assert_eq!(runs[0].record_ids.len(), RECORDS);
    assert_eq!(
        count(&project, "SELECT count(*) FROM predictions") as usize,
        first
    );
    // The list knows exactly the stored ones.
    assert_eq!(count_rows_predicted(h.state()), first);

    // Resume: the rest, none twice, the run complete.
    h.run_steps(2);
    h.get_by_label("Resume run 1").click();
    h.run_steps(2);
    step_until(&mut h, "the resumed run", Duration::from_secs(600), |wb| {
        !wb.batch.preannotate.busy()
    });
    let (note, error) = h.state().batch.preannotate.note.clone().unwrap();
    assert!(
        !error
            && note.contains("finished")
            && note.contains("20 of 20")
            && note.contains("the model failed on 1"),
        "{note}"
    );
    assert_eq!(h.state().batch.preannotate.runs[0].done, RECORDS);
    assert_eq!(
        count(
            &project,
            "SELECT count(*) FROM predictions WHERE run_id = 1"
        ) as usize,
        RECORDS
    );
    let failed = count(
        &project,
        &format!(
            "SELECT count(*) FROM predictions WHERE error LIKE 'cannot read %' \
             AND verdict LIKE 'failed: cannot read %' AND x0 IS NULL AND record_id = {}",
            broken.id
        ),
    );
    assert_eq!(failed, 1, "the unreadable record is stored with its error");
    assert_eq!(
        count(
            &project,
            "SELECT count(*) FROM predictions WHERE error IS NOT NULL"
        ),
        1
    );
    // Each predicted box is the record's `predicted` box, its confidence the match score.
    assert_eq!(
        count(
            &project,
            "SELECT count(*) FROM boxes b JOIN predictions p ON p.record_id = b.record_id \
             WHERE b.source = 'predicted' AND b.x0 = p.x0 AND b.y1 = p.y1 \
             AND b.confidence = p.match_score"
        ) as usize,
        RECORDS - 1
    );
    // Every verdict says why.
    assert_eq!(
        count(
            &project,
            "SELECT count(*) FROM predictions WHERE verdict LIKE 'verified: match % >= threshold %' \
             OR verdict LIKE 'unverified: %'"
        ) as usize,
        RECORDS - 1
    );

    // Two corrections make "far off" certain either way: one box on the far corner from its
    // prediction, one equal to it.
    h.state_mut().tab = Tab::Review;
    h.run_steps(2);
    let records = all_records(&store);
    assert_ne!(broken.id, records[0].id);
    assert_ne!(broken.id, records[1].id);
    let far_id = records[0].id;
    let near_id = records[1].id;
    let far_box = far_from(records[0].prediction.as_ref().unwrap().coords.unwrap());
    let near_box = records[1].prediction.as_ref().unwrap().coords.unwrap();
    for (id, b) in [(far_id, far_box), (near_id, near_box)] {
        h.state_mut().commands.push(Command::GoTo(id));
        h.run_steps(2);
        h.state_mut().commands.push(Command::SetBox(Some(b)));
        h.run_steps(2);
    }
    // The prediction panel shows the stored verdict with its reason.
    h.get_by_label_contains("pre-annotation run 1: ");

    // What the store says, computed here independently of the list.
    let records = all_records(&store);
    let mut unverified = Vec::new();
    let mut far = Vec::new();
    let mut doubts = Vec::new();
    for r in &records {
        let p = r.prediction.as_ref().unwrap();
        if r.id == broken.id {
            assert!(!p.ok());
            continue;
        }
        if !p.verified {
            unverified.push(r.id);
        }
        let overlap = r.ground_truth().map(|t| iou(t.coords, p.coords.unwrap()));
        if overlap.is_some_and(|v| v < FAR_IOU) {
            far.push(r.id);
        }
        doubts.push((
            r.id,
            doubt(p.match_score.unwrap(), p.threshold.unwrap(), overlap),
        ));
    }
    assert!(far.contains(&far_id) && !far.contains(&near_id), "{far:?}");

    // The filters: chosen in the list's combo box, as a user does.
    h.get_by_label_contains("Filter by the model's pre-annotation")
        .click();
    h.run_steps(3);
    h.get_by_label("box far off").click();
    h.run_steps(2);
    assert_eq!(
        h.state().browser.filters.prediction,
        PredictionFilter::FarBox
    );
    assert_eq!(shown(&mut h), far);
    h.state_mut().browser.filters.prediction = PredictionFilter::Unverified;
    assert_eq!(shown(&mut h), unverified);
    h.state_mut().browser.filters.prediction = PredictionFilter::Predicted;
    assert_eq!(shown(&mut h).len(), RECORDS);
    h.state_mut().browser.filters.prediction = PredictionFilter::NotPredicted;
    assert!(shown(&mut h).is_empty());
    h.state_mut().browser.filters.prediction = PredictionFilter::Failed;
    assert_eq!(shown(&mut h), vec![broken.id]);
    h.state_mut().browser.filters.prediction = PredictionFilter::Any;

    // The doubt order: most doubted first, ties by id; the failed record (no doubt) last.
    h.state_mut().browser.sort = SortBy::Doubt;
    let order = shown(&mut h);
    doubts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut expected: Vec<i64> = doubts.iter().map(|d| d.0).collect();
    expected.push(broken.id);
    assert_eq!(order, expected);
    // The far-off correction is doubted more than the one that agrees with the model.
    let pos = |id| order.iter().position(|&o| o == id).unwrap();
    let doubt_of = |id| doubts.iter().find(|d| d.0 == id).unwrap().1;
    assert!(doubt_of(far_id) >= 0.5 && doubt_of(near_id) <= 0.5);
    assert!(pos(far_id) < pos(near_id));

    // The review queue follows it: reviewing the most doubted moves to the next unreviewed in
    // that order.
    let unreviewed: Vec<i64> = order
        .iter()
        .copied()
        .filter(|&id| store.record(id).unwrap().status == ReviewStatus::Unreviewed)
        .collect();
    h.state_mut().commands.push(Command::GoTo(unreviewed[0]));
    h.run_steps(2);
    h.state_mut().fields.queue_mode = true;
    h.state_mut()
        .commands
        .push(Command::Review(ReviewStatus::Accepted));
    h.run_steps(2);
    let current = h.state().record.as_ref().unwrap().id;
    assert_eq!(
        current, unreviewed[1],
        "the queue goes to the next most doubted unreviewed record"
    );
    assert_eq!(
        store.record(unreviewed[0]).unwrap().status,
        ReviewStatus::Accepted
    );
}

fn all_records(store: &Project) -> Vec<StoredRecord> {
    let mut records = Vec::new();
    store
        .for_each_record(RecordFilter::All, |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
    records
}

/// The number of list rows that carry a prediction.
fn count_rows_predicted(wb: &Workbench) -> usize {
    wb.rows.iter().filter(|r| r.predicted.is_some()).count()
}

/// A box in the corner opposite `b`'s centre, so their IoU is low.
fn far_from(b: [f64; 4]) -> [f64; 4] {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let x = if cx < 0.5 { 0.8 } else { 0.0 };
    let y = if cy < 0.5 { 0.8 } else { 0.0 };
    [x, y, x + 0.2, y + 0.2]
}

#[test]
fn evaluate_and_export_from_the_window_match_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model, run) = trained(tmp.path());
    let mut h = harness(&project, &model, &run);

    // Evaluate on val with calibration, as `roiscope eval --calibrate` does.
    h.state_mut().batch.eval.calibrate = true;
    h.state_mut().batch.eval.limit = 3;
    h.run_steps(2);
    h.get_by_label("Evaluate").click();
    h.run_steps(2);
    step_until(&mut h, "the evaluation", Duration::from_secs(600), |wb| {
        wb.batch.eval.task.is_none()
    });
    let evaluation = match h.state().batch.eval.result.clone().unwrap() {
        Ok(e) => e,
        Err(e) => panic!("evaluation failed: {e}"),
    };
    assert_eq!(evaluation.json_path, run.join("eval-val/report.json"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&evaluation.json_path).unwrap()).unwrap();
    let val = count(&project, "SELECT count(*) FROM records WHERE split = 'val'");
    assert!(val > 0, "the prepared project has a val split");
    assert_eq!(report["summary"]["records"], val.min(3));
    assert!(std::fs::read_to_string(&evaluation.html_path)
        .unwrap()
        .contains("<svg"));
    let calibration: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("calibration.json")).unwrap())
            .unwrap();
    assert_eq!(
        calibration["threshold"].as_f64(),
        Some(evaluation.threshold)
    );
    // The report's numbers are in the window, with the button that opens it.
    h.run_steps(2);
    h.get_by_label_contains("ROI: mean IoU");
    h.get_by_label_contains("calibrated threshold");
    h.get_by_label("Open report");

    // Export as JSON lines: the same file `roiscope export` writes.
    h.get_by_label("Export").click();
    h.run_steps(2);
    step_until(&mut h, "the export", Duration::from_secs(120), |wb| {
        wb.batch.export.task.is_none()
    });
    let (out, lines) = match h.state().batch.export.result.clone().unwrap() {
        Ok(r) => r,
        Err(e) => panic!("export failed: {e}"),
    };
    assert_eq!(out, project.join("exports/jsonl.jsonl"));
    assert!(lines[0].starts_with("exported 20 records"), "{lines:?}");
    h.run_steps(2);
    h.get_by_label_contains("exported 20 records");
    let cli = tmp.path().join("cli.jsonl");
    ok(roiscope()
        .args(["export", "--format", "jsonl", "--project"])
        .arg(&project)
        .arg("--out")
        .arg(&cli));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(&cli).unwrap()
    );
    // A model that is not there: the reason, and the window lives.
    h.state_mut().settings.model_folder = tmp.path().join("nothing").display().to_string();
    h.get_by_label("Evaluate").click();
    h.run_steps(2);
    step_until(
        &mut h,
        "the failed evaluation",
        Duration::from_secs(60),
        |wb| wb.batch.eval.task.is_none(),
    );
    let err = h.state().batch.eval.result.clone().unwrap().err().unwrap();
    assert!(err.contains("nothing"), "{err}");
}
