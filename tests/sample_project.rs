//! The bundled sample project (`assets/sample`, made by `tests/fixtures/make_sample_project.py`).

mod support {
    pub mod roi_set;
}

use std::path::Path;
use std::process::Command;

use roiscope::data::sample::read_records;
use support::roi_set::{load_truth, score_robust};

fn sample_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample"))
}

#[test]
fn every_drawn_box_is_found_and_nothing_else() {
    let dir = sample_dir();
    let s = score_robust(dir, &load_truth(dir));
    assert_eq!(s.with_box, 21);
    assert_eq!(s.without_box, 3);
    assert_eq!(s.primary_correct, s.with_box, "{:#?}", s.failures);
    assert_eq!(s.false_positives, 0, "{:#?}", s.failures);
}

#[test]
fn records_keep_every_field_and_both_answer_forms() {
    let records = read_records(
        &sample_dir().join("raw_data.json"),
        "Clinical Diagnosis Tips",
    )
    .expect("sample records parse");
    assert_eq!(records.len(), 24);
    // Every record has a diagnosis: from the structured field or the plain-text answer.
    assert!(records.iter().all(|r| r.diagnosis.is_some()));
    let plain = records.iter().filter(|r| r.fields.is_empty()).count();
    assert_eq!(plain, 2, "two records answer in plain text");
    assert!(records
        .iter()
        .any(|r| r.fields.iter().any(|(k, _)| k == "Annotator Note")));
    assert!(records.iter().any(|r| r
        .diagnosis
        .as_deref()
        .is_some_and(|d| d.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)))));
}

#[test]
fn the_sample_command_summarises_the_sample() {
    let out = Command::new(env!("CARGO_BIN_EXE_roiscope"))
        .arg("sample")
        .output()
        .expect("roiscope runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("24 records"), "{text}");
    assert!(
        text.contains("21 records with a detected box, 3 without, 0 unreadable."),
        "{text}"
    );
}

#[test]
fn a_missing_or_broken_project_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |d: &Path| {
        Command::new(env!("CARGO_BIN_EXE_roiscope"))
            .args(["sample", "--project"])
            .arg(d)
            .output()
            .unwrap()
    };
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    std::fs::write(dir.path().join("raw_data.json"), "[{\"messages\": [}").unwrap();
    let out = run(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("not valid JSON") && err.contains("line 1"),
        "{err}"
    );
}
