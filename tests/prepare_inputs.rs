//! `prepare` on the inputs users actually have: data folders linked to storage elsewhere, FIFOs
//! in the data root, corrected records given again, and files with a byte order mark, in UTF-16
//! or with NaN.

#[path = "support/project.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Runs `cmd`, failing the test (instead of hanging it) if it takes over a minute.
fn within_a_minute(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("roiscope runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{cmd:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

fn group<'a>(report: &'a Value, reason: &str) -> Option<&'a Value> {
    report["skipped_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reason"] == reason)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

#[test]
fn a_linked_data_folder_is_followed_and_a_fifo_is_skipped_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // The images live elsewhere; the data root links to them, as large data sets are laid out.
    let store = tmp.path().join("store/scans");
    std::fs::create_dir_all(&store).unwrap();
    let images = roi_images(2);
    for n in &images {
        std::fs::copy(roi_set_dir().join(n), store.join(n)).unwrap();
    }
    let root = tmp.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&store, root.join("img")).unwrap();
    mkfifo(&root.join("pipe.jpg"));
    let mut records: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, n)| record(&format!("img/{n}"), i))
        .collect();
    records.push(record("pipe.jpg", 7));
    records.push(record("img/../../store/scans/x.jpg", 8)); // still refused: leaves lexically
    let input = write_input(tmp.path(), "raw.json", &records);

    let project = tmp.path().join("p1");
    let r = report(&within_a_minute(
        prepare_cmd(&input, &root, &project).arg("--json"),
    ));
    assert_eq!(r["kept"], 2, "{r:#}");
    let fifo = group(&r, "not a regular file").expect("the FIFO is reported");
    assert_eq!(fifo["count"], 1);
    assert_eq!(
        fifo["examples"][0]["detail"],
        "pipe.jpg is a FIFO (named pipe), not a regular file"
    );
    assert_eq!(group(&r, "path outside the data root").unwrap()["count"], 1);

    // --stay-in-root refuses the link, naming it, its target and the option.
    let strict = tmp.path().join("p2");
    let r = report(&within_a_minute(
        prepare_cmd(&input, &root, &strict).args(["--json", "--stay-in-root"]),
    ));
    assert_eq!(r["kept"], 0, "{r:#}");
    let outside = group(&r, "path outside the data root").unwrap();
    assert_eq!(outside["count"], 3);
    let detail = outside["examples"][0]["detail"].as_str().unwrap();
    let target = store.canonicalize().unwrap();
    assert!(
        detail.contains(&format!("img is a symbolic link to {}", target.display()))
            && detail.contains("--stay-in-root"),
        "{detail}"
    );

    // detect-roi over the folder: the FIFO gets an error line, the run ends.
    let out = within_a_minute(roiscope().args(["detect-roi", s(&root)]));
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pipe = lines
        .iter()
        .find(|l| l["image"].as_str().unwrap().ends_with("pipe.jpg"))
        .expect("a line for the FIFO");
    assert!(pipe["error"].as_str().unwrap().contains("FIFO"), "{pipe}");
    assert_eq!(lines.iter().filter(|l| l["error"].is_null()).count(), 2);
}

#[test]
fn changed_roi_coords_and_target_diag_are_reported_and_applied_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("img")).unwrap();
    let images = roi_images(3);
    for n in &images {
        std::fs::copy(roi_set_dir().join(n), root.join("img").join(n)).unwrap();
    }
    let mut records: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, n)| record(&format!("img/{n}"), i))
        .collect();
    let input = write_input(tmp.path(), "raw.json", &records);
    let project = tmp.path().join("p");
    report(&within_a_minute(
        prepare_cmd(&input, &root, &project).arg("--json"),
    ));

    // The same records, two of them corrected in the file.
    records[0]["roi_coords"] = json!([0.1, 0.2, 0.3, 0.4]);
    records[2]["target_diag"] = json!("corrected diagnosis");
    let input = write_input(tmp.path(), "raw_fixed.json", &records);
    let r = report(&within_a_minute(
        prepare_cmd(&input, &root, &project).arg("--json"),
    ));
    assert_eq!(r["already_in_project"], 3);
    assert_eq!(r["changed"], 2, "{r:#}");
    assert_eq!(r["changes_applied"], 0);
    let ex = r["changed_examples"].as_array().unwrap();
    assert_eq!(ex[0]["record"], 1);
    assert!(ex[0]["detail"]
        .as_str()
        .unwrap()
        .contains("roi_coords [0.1, 0.2, 0.3, 0.4]"));
    assert!(ex[1]["detail"]
        .as_str()
        .unwrap()
        .contains("target_diag \"corrected diagnosis\", project \"suggestive of finding 2\""));
    // Not applied: the project is as it was.
    assert_eq!(count(&project, "SELECT count(*) FROM edits"), 0);
    let text = String::from_utf8(within_a_minute(&mut prepare_cmd(&input, &root, &project)).stdout)
        .unwrap();
    assert!(text.contains("run again with --apply-changes"), "{text}");

    let r = report(&within_a_minute(
        prepare_cmd(&input, &root, &project).args(["--json", "--apply-changes"]),
    ));
    assert_eq!(r["changes_applied"], 2);
    let seed = tmp.path().join("seed.json");
    run_ok(&[
        "export",
        "--project",
        s(&project),
        "--format",
        "seed-json",
        "--out",
        s(&seed),
    ]);
    let exported: Value = serde_json::from_slice(&std::fs::read(&seed).unwrap()).unwrap();
    assert_eq!(exported[0]["roi_coords"], json!([0.1, 0.2, 0.3, 0.4]));
    let third = exported
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["images"][0] == format!("img/{}", images[2]));
    if let Some(third) = third {
        assert_eq!(third["target_diag"], "corrected diagnosis");
    }
    let history = String::from_utf8(run_ok(&["project", "history", s(&project)]).stdout).unwrap();
    assert!(history.contains("import: raw_fixed.json"), "{history}");
    assert_eq!(
        count(
            &project,
            "SELECT count(*) FROM records WHERE diagnosis = 'corrected diagnosis'"
        ),
        1
    );
    // Now the project says what the file says.
    let r = report(&within_a_minute(
        prepare_cmd(&input, &root, &project).arg("--json"),
    ));
    assert_eq!(r["changed"], 0);
}

#[test]
fn a_byte_order_mark_is_accepted_and_utf16_and_nan_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("img")).unwrap();
    let n = roi_images(1).remove(0);
    std::fs::copy(roi_set_dir().join(&n), root.join("img").join(&n)).unwrap();
    let text = serde_json::to_string(&json!([record(&format!("img/{n}"), 0)])).unwrap();

    let bom = tmp.path().join("bom.json");
    std::fs::write(&bom, format!("\u{feff}{text}")).unwrap();
    let r = report(&within_a_minute(
        prepare_cmd(&bom, &root, &tmp.path().join("p1")).arg("--json"),
    ));
    assert_eq!(r["kept"], 1);

    let utf16 = tmp.path().join("utf16.json");
    let mut bytes = vec![0xFF, 0xFE];
    for u in text.encode_utf16() {
        bytes.extend(u.to_le_bytes());
    }
    std::fs::write(&utf16, bytes).unwrap();
    let err = fails(&mut prepare_cmd(&utf16, &root, &tmp.path().join("p2")));
    assert!(
        err.contains("utf16.json is UTF-16, not UTF-8") && err.contains("iconv"),
        "{err}"
    );

    let nan = tmp.path().join("nan.json");
    std::fs::write(
        &nan,
        text.replace(
            "\"images\"",
            "\"roi_coords\": [0.1, NaN, 0.5, 0.6], \"images\"",
        ),
    )
    .unwrap();
    let err = fails(&mut prepare_cmd(&nan, &root, &tmp.path().join("p3")));
    assert!(
        err.contains("nan.json:1:") && err.contains("NaN is not a JSON value"),
        "{err}"
    );
}
