//! The project store as a user meets it: `prepare`, its report, `export`, `project info`,
//! edits with undo, schema versions.

#[path = "support/project.rs"]
mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use roiscope::data::store::{schema, BoxSource, Edit, Project, ReviewStatus};
use serde_json::{json, Value};
use support::*;

fn prepare_json(input: &Path, images: &Path, project: &Path, extra: &[&str]) -> Value {
    let out = ok(prepare_cmd(input, images, project)
        .arg("--json")
        .args(extra));
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

fn reason_count(report: &Value, reason: &str) -> u64 {
    report["skipped_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reason"] == reason)
        .map_or(0, |g| g["count"].as_u64().unwrap())
}

#[test]
fn the_report_names_every_skip_reason_and_a_rerun_redoes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("img")).unwrap();
    let images = roi_images(6);
    for name in &images {
        std::fs::copy(roi_set_dir().join(name), root.join("img").join(name)).unwrap();
    }
    std::fs::write(root.join("img/not_an_image.jpg"), b"hello, I am text").unwrap();
    std::fs::write(tmp.path().join("outside.jpg"), b"x").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside.jpg"), root.join("img/link.jpg")).unwrap();

    let mut records: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, n)| record(&format!("img/{n}"), i))
        .collect();
    let good = records.len();
    records.push(records[0].clone()); // duplicate
    records.push(json!(42)); // not an object
    records.push(json!({"images": ["img/x.jpg"]})); // no messages
    let mut no_diag = record("img/a.jpg", 90);
    no_diag["messages"][1]["content"]["extractions"]
        .as_object_mut()
        .unwrap()
        .remove("Clinical Diagnosis Tips");
    records.push(no_diag);
    records.push(record("../outside.jpg", 91));
    records.push(record("/etc/hostname", 92));
    records.push(record("img/link.jpg", 93));
    records.push(record("img/missing.jpg", 94));
    records.push(record("img/not_an_image.jpg", 95));
    let mut bad_box = record(&format!("img/{}", images[1]), 96);
    bad_box["roi_coords"] = json!([0.9, 0.1, 0.2, 0.5]);
    records.push(bad_box);
    let input = write_input(tmp.path(), "raw_data.json", &records);
    let project = tmp.path().join("project");

    let report = prepare_json(&input, &root, &project, &["--threads", "2"]);
    assert_eq!(report["records_in_input"], records.len());
    assert_eq!(report["kept"], good);
    for (reason, n) in [
        ("duplicate", 1),
        ("missing field", 2),
        ("no diagnosis field", 1),
        // The link inside the root is followed (to a file that is not an image).
        ("path outside the data root", 2),
        ("missing image", 1),
        ("unreadable image", 2),
        ("invalid roi_coords", 1),
    ] {
        assert_eq!(reason_count(&report, reason), n, "{reason}: {report:#}");
    }
    assert_eq!(report["skipped"], records.len() - good);
    let dup = &report["skipped_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reason"] == "duplicate")
        .unwrap()["examples"][0];
    assert_eq!(dup["record"], good + 1);
    assert_eq!(dup["detail"], "same content as record 1");
    // The report is in the project too.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(project.join("prepare-report.json")).unwrap())
            .unwrap();
    assert_eq!(stored["kept"], good);
    let info: Value =
        serde_json::from_slice(&run_ok(&["project", "info", s(&project), "--json"]).stdout)
            .unwrap();
    assert_eq!(info["records"], good);
    let skipped: u64 = info["last_prepare"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap())
        .sum();
    assert_eq!(skipped as usize, records.len() - good);

    // Again: nothing is redone or duplicated; the broken records are reported again.
    let again = prepare_json(&input, &root, &project, &[]);
    assert_eq!(again["kept"], 0);
    assert_eq!(again["already_in_project"], good);
    assert_eq!(again["skipped"], records.len() - good);
    assert_eq!(count(&project, "SELECT count(*) FROM records"), good as i64);

    // The text report groups the reasons.
    let out = ok(&mut prepare_cmd(&input, &root, &project));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("path outside the data root"), "{text}");
    assert!(text.contains("already in project"), "{text}");
}

#[test]
fn malformed_json_is_reported_with_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("raw_data.json");
    std::fs::write(
        &input,
        "[\n  {\"images\": [\"a.jpg\"], \"messages\": []},\n  {\"images\": [\"b.jpg\"] \"messages\": []}\n]\n",
    )
    .unwrap();
    let project = tmp.path().join("p");
    let err = fails(&mut prepare_cmd(&input, tmp.path(), &project));
    assert!(
        err.contains("raw_data.json:3:24: expected `,` or `}`"),
        "{err}"
    );
    assert!(
        !project.join("roiscope.db").exists(),
        "nothing is created for a broken input"
    );
}

#[test]
fn export_and_import_round_trip_with_edits_and_unknown_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    // The sample records plus an unknown key, so its survival is checked too.
    let mut records: Value =
        serde_json::from_slice(&std::fs::read(sample.join("raw_data.json")).unwrap()).unwrap();
    for (i, r) in records.as_array_mut().unwrap().iter_mut().enumerate() {
        r["provenance"] = json!({"row": i, "tags": ["a", null, 1.5]});
    }
    let input = write_input(tmp.path(), "raw.json", records.as_array().unwrap());
    let a = tmp.path().join("a");
    prepare_json(&input, &sample, &a, &[]);
    {
        let mut p = Project::open(&a).unwrap();
        p.apply_edit(
            1,
            &Edit::SetBox {
                source: BoxSource::Corrected,
                coords: Some([0.125, 0.25, 0.5, 0.625]),
            },
            "tester",
        )
        .unwrap();
        p.apply_edit(
            2,
            &Edit::SetStatus {
                status: ReviewStatus::Accepted,
            },
            "tester",
        )
        .unwrap();
        p.apply_edit(
            3,
            &Edit::SetField {
                name: "Clinical Diagnosis Tips".into(),
                value: Some(json!("edited diagnosis")),
            },
            "tester",
        )
        .unwrap();
    }
    for format in ["jsonl", "seed-json"] {
        let first = tmp.path().join(format!("first.{format}"));
        let second = tmp.path().join(format!("second.{format}"));
        let b = tmp.path().join(format!("b-{format}"));
        run_ok(&[
            "export",
            "--project",
            s(&a),
            "--format",
            format,
            "--out",
            s(&first),
        ]);
        prepare_json(&first, &sample, &b, &[]);
        run_ok(&[
            "export",
            "--project",
            s(&b),
            "--format",
            format,
            "--out",
            s(&second),
        ]);
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
            "{format} export -> prepare -> export changes nothing"
        );
    }
    // What the exports say.
    let jsonl = std::fs::read_to_string(tmp.path().join("first.jsonl")).unwrap();
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 24);
    assert_eq!(rows[0]["roi_coords"], json!([0.125, 0.25, 0.5, 0.625]));
    assert_eq!(rows[0]["roiscope"]["boxes"].as_array().unwrap().len(), 2);
    assert_eq!(rows[1]["roiscope"]["status"], "accepted");
    assert_eq!(rows[2]["target_diag"], "edited diagnosis");
    assert_eq!(
        rows[2]["messages"][1]["content"]["extractions"]["Clinical Diagnosis Tips"],
        "edited diagnosis"
    );
    assert_eq!(
        rows[5]["provenance"],
        json!({"row": 5, "tags": ["a", null, 1.5]})
    );
    let seed: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("first.seed-json")).unwrap())
            .unwrap();
    let seed = seed.as_array().unwrap();
    assert_eq!(
        seed.len(),
        21,
        "the three records without a box are left out"
    );
    assert!(seed
        .iter()
        .all(|r| r["roiscope"].is_null() && r["roi_coords"].is_array()));

    let coco_path = tmp.path().join("coco.json");
    run_ok(&[
        "export",
        "--project",
        s(&a),
        "--format",
        "coco",
        "--out",
        s(&coco_path),
    ]);
    let coco: Value = serde_json::from_slice(&std::fs::read(&coco_path).unwrap()).unwrap();
    assert_eq!(coco["images"].as_array().unwrap().len(), 24);
    assert_eq!(coco["annotations"].as_array().unwrap().len(), 21);
    let first = &coco["images"][0];
    let (w, h) = (
        first["width"].as_f64().unwrap(),
        first["height"].as_f64().unwrap(),
    );
    let bbox = &coco["annotations"][0]["bbox"];
    assert_eq!(coco["annotations"][0]["image_id"], first["id"]);
    assert_eq!(bbox[0].as_f64().unwrap(), 0.125 * w);
    assert_eq!(bbox[3].as_f64().unwrap(), (0.625 - 0.25) * h);

    // Only one split.
    let val = tmp.path().join("val.jsonl");
    run_ok(&[
        "export",
        "--project",
        s(&a),
        "--format",
        "jsonl",
        "--split",
        "val",
        "--out",
        s(&val),
    ]);
    let val = std::fs::read_to_string(&val).unwrap();
    assert!(!val.is_empty());
    assert!(val.lines().all(|l| l.contains("\"split\":\"val\"")));
}

#[test]
fn undo_and_redo_follow_the_history() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let project = tmp.path().join("p");
    prepare_json(&sample.join("raw_data.json"), &sample, &project, &[]);
    let mut p = Project::open(&project).unwrap();
    let status = |p: &Project| p.record(4).unwrap().status;
    let set = |p: &mut Project, s| {
        p.apply_edit(4, &Edit::SetStatus { status: s }, "t")
            .unwrap();
    };
    set(&mut p, ReviewStatus::Accepted);
    set(&mut p, ReviewStatus::Rejected);
    p.apply_edit(
        4,
        &Edit::SetBox {
            source: BoxSource::Corrected,
            coords: Some([0.1, 0.2, 0.3, 0.4]),
        },
        "t",
    )
    .unwrap();
    assert!(p.record(4).unwrap().get_box(BoxSource::Corrected).is_some());
    p.undo().unwrap().unwrap();
    assert!(p.record(4).unwrap().get_box(BoxSource::Corrected).is_none());
    p.undo().unwrap().unwrap();
    assert_eq!(status(&p), ReviewStatus::Accepted);
    p.redo().unwrap().unwrap();
    assert_eq!(status(&p), ReviewStatus::Rejected);
    // A new edit drops what could be redone.
    set(&mut p, ReviewStatus::NeedsFix);
    assert!(p.redo().unwrap().is_none());
    p.undo().unwrap();
    p.undo().unwrap();
    p.undo().unwrap();
    assert_eq!(status(&p), ReviewStatus::Unreviewed);
    assert!(p.undo().unwrap().is_none());
    let states: Vec<String> = p
        .history(Some(4))
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(states, ["undone", "undone", "dropped", "undone"]);
    // Bad edits are refused and change nothing.
    let bad = Edit::SetBox {
        source: BoxSource::Corrected,
        coords: Some([0.5, 0.2, 0.3, 0.4]),
    };
    assert!(p.apply_edit(4, &bad, "t").is_err());
    assert!(p
        .apply_edit(
            999,
            &Edit::SetStatus {
                status: ReviewStatus::Accepted
            },
            "t"
        )
        .is_err());
    assert_eq!(p.history(None).unwrap().len(), 4);
}

#[test]
fn older_schemas_migrate_and_newer_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let project = tmp.path().join("p");
    prepare_json(&sample.join("raw_data.json"), &sample, &project, &[]);
    let db = project.join("roiscope.db");

    // A version-1 project (before prepare runs were recorded) with a record in it.
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    {
        let mut conn = rusqlite::Connection::open(old.join("roiscope.db")).unwrap();
        schema::migrate_to(&mut conn, 1).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO meta VALUES ('data_root', '{}'), ('diagnosis_field', 'Clinical Diagnosis Tips');
             INSERT INTO records(key, source_index, image, width, height, record, fields, diagnosis, stratum)
             VALUES ('k1', 0, 'images/a.jpg', 10, 10, '{{}}', NULL, 'd', '');",
            sample.display()
        ))
        .unwrap();
    }
    let p = Project::open(&old).unwrap();
    assert_eq!(p.summary().unwrap().schema_version, schema::CURRENT_VERSION);
    assert_eq!(p.record_count().unwrap(), 1);
    drop(p);

    // A project from the future.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let out = roiscope()
        .args(["project", "info", s(&project)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer roiscope (schema version 99"), "{err}");

    // Some other SQLite file, and no project at all.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    rusqlite::Connection::open(other.join("roiscope.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t(x);")
        .unwrap();
    let err = Project::open(&other).err().unwrap();
    assert!(
        format!("{err:#}").contains("not a roiscope project database"),
        "{err:#}"
    );
    let err = Project::open(tmp.path()).err().unwrap();
    assert!(err.to_string().contains("not a roiscope project"), "{err}");
}

#[test]
fn a_project_keeps_its_data_root() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let project = tmp.path().join("p");
    prepare_json(&sample.join("raw_data.json"), &sample, &project, &[]);
    let raw = sample.join("raw_data.json");
    let err = fails(&mut prepare_cmd(&raw, tmp.path(), &project));
    assert!(err.contains("was prepared with images from"), "{err}");

    // While one prepare holds the project, another is refused rather than interleaved.
    let lock = std::fs::File::create(project.join("prepare.lock")).unwrap();
    lock.lock().unwrap();
    let err = fails(&mut prepare_cmd(&raw, &sample, &project));
    assert!(
        err.contains("another `roiscope prepare` is running"),
        "{err}"
    );
    drop(lock);
    ok(&mut prepare_cmd(&raw, &sample, &project));
}

#[test]
fn splits_are_stratified_and_do_not_depend_on_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = roi_set_dir();
    let images = roi_images(120);
    let mut records: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, n)| record(n, i))
        .collect();
    let a = tmp.path().join("a");
    prepare_json(
        &write_input(tmp.path(), "a.json", &records),
        &root,
        &a,
        &["--threads", "2"],
    );
    records.reverse();
    let b = tmp.path().join("b");
    prepare_json(
        &write_input(tmp.path(), "b.json", &records),
        &root,
        &b,
        &["--threads", "1"],
    );
    let splits = |p: &Path| -> Vec<(String, String, String)> {
        let conn = rusqlite::Connection::open(p.join("roiscope.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT key, stratum, split FROM records ORDER BY key")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (sa, sb) = (splits(&a), splits(&b));
    assert_eq!(sa, sb);
    // Four strata of 30: each gets about 24/3/3.
    let mut per: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for (_, stratum, split) in &sa {
        *per.entry((stratum.clone(), split.clone())).or_default() += 1;
    }
    assert_eq!(per.len(), 12, "{per:?}");
    for ((stratum, split), n) in &per {
        match split.as_str() {
            "train" => assert!((23..=25).contains(n), "{stratum} {split} {n}"),
            _ => assert!((2..=4).contains(n), "{stratum} {split} {n}"),
        }
    }
}

#[test]
fn dicom_records_are_rendered_for_the_model_and_keep_their_original() {
    let tmp = tempfile::tempdir().unwrap();
    let root =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicom"));
    let records = vec![
        record("CT_small.dcm", 0),
        record("MR_small_jp2klossless.dcm", 1),
        record("US1_J2KR.dcm", 2),
        record("JPEGLSNearLossless_16.dcm", 3),
    ];
    let input = write_input(tmp.path(), "raw.json", &records);
    let project = tmp.path().join("p");
    let report = prepare_json(&input, &root, &project, &[]);
    assert_eq!(report["kept"], 3, "{report:#}");
    assert_eq!(reason_count(&report, "unreadable image"), 1);
    let detail = &report["skipped_by_reason"][0]["examples"][0]["detail"];
    assert!(detail.as_str().unwrap().contains("JPEG-LS"), "{detail}");
    let p = Project::open(&project).unwrap();
    let r = p.record(1).unwrap();
    assert_eq!(r.image, "CT_small.dcm", "the record points at the original");
    assert_eq!((r.width, r.height), (128, 128));
    let rendering = p.training_image_path(&r);
    assert!(
        rendering.starts_with(&project),
        "the rendering lives in the project cache"
    );
    let png = image::open(&rendering).unwrap().into_rgb8();
    let direct = roiscope::data::image_io::load_rgb8(
        &root.join("CT_small.dcm"),
        roiscope::data::image_io::LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        png, direct,
        "the cache holds exactly the windowed rendering"
    );
}

#[test]
fn the_diagnosis_field_can_be_chosen() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let project = tmp.path().join("p");
    let raw = sample.join("raw_data.json");
    let report = prepare_json(&raw, &sample, &project, &["--diagnosis-field", "Organ"]);
    assert_eq!(report["kept"], 24);
    let p = Project::open(&project).unwrap();
    assert_eq!(p.diagnosis_field(), "Organ");
    assert_eq!(p.record(1).unwrap().diagnosis, "Lungs");
    // Record 9 answers in plain text: the text stays its diagnosis.
    assert!(p.record(9).unwrap().fields.is_none());
    // A project keeps the field it was made with.
    let err = fails(&mut prepare_cmd(&raw, &sample, &project));
    assert!(err.contains("uses the diagnosis field \"Organ\""), "{err}");
}

/// `export --out` never replaces the project's own files, a folder, a device or a pipe: each is
/// refused with the path named and exit code 1, and the project still opens with its records.
/// A good export leaves no temporary file beside it.
#[test]
fn export_refuses_the_projects_own_files_devices_pipes_and_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let project = tmp.path().join("p");
    prepare_json(&sample.join("raw_data.json"), &sample, &project, &[]);
    let records = Project::open(&project).unwrap().record_count().unwrap() as usize;
    let db_before = std::fs::read(project.join("roiscope.db")).unwrap();
    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Another spelling of the database: through `..` and through a symbolic link.
    let link = tmp.path().join("link.json");
    std::os::unix::fs::symlink(project.join("roiscope.db"), &link).unwrap();
    let dotted = project.join("cache/../roiscope.db");
    for (out, says) in [
        (project.join("roiscope.db"), "project's own files"),
        (dotted, "project's own files"),
        (link, "project's own files"),
        (project.join("roiscope.db-wal"), "project's own files"),
        (project.join("prepare-report.json"), "project's own files"),
        (project.clone(), "is a folder"),
        (tmp.path().to_path_buf(), "is a folder"),
        (PathBuf::from("/dev/null"), "not a regular file"),
        (fifo.clone(), "not a regular file"),
    ] {
        let err = fails(roiscope().args([
            "export",
            "--project",
            s(&project),
            "--format",
            "jsonl",
            "--out",
            s(&out),
        ]));
        assert!(err.contains(says), "{}: {err}", out.display());
        assert!(err.contains(s(&out)), "the path is named: {err}");
    }
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(
        std::fs::read(project.join("roiscope.db")).unwrap(),
        db_before
    );
    assert_eq!(
        Project::open(&project).unwrap().record_count().unwrap() as usize,
        records
    );
    // A file of its own inside the project folder is allowed, and no temporary file is left.
    let inside = project.join("export.jsonl");
    run_ok(&[
        "export",
        "--project",
        s(&project),
        "--format",
        "jsonl",
        "--out",
        s(&inside),
    ]);
    assert_eq!(
        std::fs::read_to_string(&inside).unwrap().lines().count(),
        records
    );
    let leftovers: Vec<_> = std::fs::read_dir(&project)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Each kind of text the trainer cannot take is refused by `prepare` with the record named (its
/// place in the input): a 300,000-word diagnosis, `<|image_pad|>` typed into a question, a
/// second `<image>` in a question; and by `project edit` for the diagnosis. The other records are
/// kept.
#[test]
fn prepare_and_edit_refuse_texts_the_trainer_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let mut records: Vec<Value> =
        serde_json::from_slice(&std::fs::read(sample.join("raw_data.json")).unwrap()).unwrap();
    let n = records.len();
    records[1]["target_diag"] = json!("word ".repeat(300_000));
    records[2]["messages"][0]["content"] = json!("<image>Is this <|image_pad|> normal?");
    records[3]["messages"][0]["content"] = json!("<image>Compare with <image>.");
    let input = tmp.path().join("bad.json");
    std::fs::write(&input, serde_json::to_vec(&records).unwrap()).unwrap();
    let project = tmp.path().join("p");
    let report = prepare_json(&input, &sample, &project, &[]);
    assert_eq!(
        reason_count(&report, "text the trainer cannot take"),
        3,
        "{report:#}"
    );
    let group = report["skipped_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reason"] == "text the trainer cannot take")
        .unwrap();
    let named: Vec<(u64, String)> = group["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["record"].as_u64().unwrap(),
                e["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(named.len(), 3);
    assert_eq!(named[0].0, 2);
    assert!(named[0].1.contains("1500000 characters"), "{named:?}");
    assert_eq!(named[1].0, 3);
    assert!(
        named[1].1.contains("special token <|image_pad|>"),
        "{named:?}"
    );
    assert_eq!(named[2].0, 4);
    assert!(named[2].1.contains("more than one <image>"), "{named:?}");
    let mut p = Project::open(&project).unwrap();
    assert_eq!(p.record_count().unwrap() as usize, n - 3);

    let first = p.record(1).unwrap().id;
    for text in ["a <|im_end|> b".to_string(), "x".repeat(20_001)] {
        let err = p
            .apply_edit(first, &Edit::SetDiagnosis { text }, "t")
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("record {first}")),
            "{err:#}"
        );
    }
    p.apply_edit(
        first,
        &Edit::SetDiagnosis {
            text: "a fine diagnosis".into(),
        },
        "t",
    )
    .unwrap();
}
