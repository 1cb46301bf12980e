//! Shared helpers for the project-store tests: seed-format inputs over the committed ROI test
//! images, and the `roiscope` binary as a child process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

pub fn roiscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roiscope"))
}

pub fn run_ok(args: &[&str]) -> Output {
    let out = roiscope().args(args).output().expect("roiscope runs");
    assert!(
        out.status.success(),
        "roiscope {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `roiscope prepare -q` with its three paths; more arguments may follow.
pub fn prepare_cmd(input: &Path, images: &Path, project: &Path) -> Command {
    let mut cmd = roiscope();
    cmd.args([
        "prepare",
        "--input",
        s(input),
        "--images",
        s(images),
        "--project",
        s(project),
        "-q",
    ]);
    cmd
}

/// Runs a command that must succeed; its output.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("roiscope runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail with exit code 1; its standard error.
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("roiscope runs");
    assert_eq!(out.status.code(), Some(1), "{cmd:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The committed ROI test images (JPEG and PNG with green boxes drawn in, some without).
pub fn roi_set_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/roi_set"
    ))
}

pub fn sample_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample"))
}

/// The first `n` images of the ROI test set, by file name.
pub fn roi_images(n: usize) -> Vec<String> {
    let truth: Value = serde_json::from_slice(
        &std::fs::read(roi_set_dir().join("truth.json")).expect("truth.json"),
    )
    .expect("truth.json is JSON");
    truth
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["file"].as_str().expect("file").to_string())
        .take(n)
        .collect()
}

/// A seed-format record for `image`, with structured fields and an unknown top-level key.
pub fn record(image: &str, i: usize) -> Value {
    let modality = ["CT (axial)", "MRI", "Ultrasound", "X-ray"][i % 4];
    let organ = ["Liver", "Lung"][i % 2];
    json!({
        "messages": [
            {"role": "user", "content": format!("<image>Describe the finding in image {i}.")},
            {"role": "assistant", "content": {"extractions": {
                "Modality": modality,
                "Organ": organ,
                "ROI Location": format!("region {i}"),
                "Clinical Diagnosis Tips": format!("suggestive of finding {i}"),
                "Reviewer Notes": {"nested": [i, "kept verbatim"]}
            }}}
        ],
        "images": [image],
        "source": {"dataset": "roiscope-test", "row": i}
    })
}

/// Writes `records` as a JSON array and returns the path.
pub fn write_input(dir: &Path, name: &str, records: &[Value]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&Value::from(records.to_vec())).unwrap(),
    )
    .unwrap();
    path
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// `PRAGMA integrity_check` of a project's database, opened as a plain SQLite file.
pub fn integrity(project: &Path) -> String {
    let conn = rusqlite::Connection::open(project.join("roiscope.db")).expect("db opens");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check runs")
}

pub fn count(project: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(project.join("roiscope.db")).expect("db opens");
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    conn.query_row(sql, [], |r| r.get(0)).expect("count runs")
}

/// A small deterministic pseudo-random sequence (xorshift64*), for kill times.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}
