//! Crashes and company: `kill -9` during `prepare` and during a stream of edits, and two
//! processes on one project. Every test uses real child processes.

#[path = "support/project.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn prepare(input: &Path, root: &Path, project: &Path) -> std::process::Command {
    let mut cmd = prepare_cmd(input, root, project);
    cmd.args(["--threads", "2"]);
    cmd
}

fn export(project: &Path, format: &str, out: &Path) -> Vec<u8> {
    run_ok(&[
        "export",
        "--project",
        s(project),
        "--format",
        format,
        "--out",
        s(out),
    ]);
    std::fs::read(out).unwrap()
}

fn splits(project: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(project.join("roiscope.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, split FROM records ORDER BY key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Records in the project so far (0 while its database is not set up yet).
fn committed_records(project: &Path) -> i64 {
    if !project.join("roiscope.db").exists() || !has_table(project, "records") {
        return 0;
    }
    count(project, "SELECT count(*) FROM records")
}

fn has_table(project: &Path, table: &str) -> bool {
    count(
        project,
        &format!("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{table}'"),
    ) == 1
}

fn partial_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += partial_files(&path);
        } else if path.to_string_lossy().ends_with(".partial") {
            n += 1;
        }
    }
    n
}

#[test]
fn kill_9_during_prepare_loses_nothing_and_a_rerun_completes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = roi_set_dir();
    // Every test image four times (different questions), so a run lasts long enough to be cut
    // several times before the project is complete.
    let images = roi_images(300);
    let records: Vec<Value> = std::iter::repeat_n(images.iter(), 4)
        .flatten()
        .enumerate()
        .map(|(i, n)| record(n, i))
        .collect();
    let input = write_input(tmp.path(), "raw_data.json", &records);

    let reference = tmp.path().join("reference");
    let started = Instant::now();
    ok(&mut prepare(&input, &root, &reference));
    let full_run = started.elapsed();
    let expected_seed = export(&reference, "seed-json", &tmp.path().join("ref.json"));
    let expected_count = count(&reference, "SELECT count(*) FROM records");
    assert_eq!(expected_count as usize, records.len());

    let project = tmp.path().join("killed");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut cut_mid_run = 0;
    let mut progressed = 0;
    let mut last = 0;
    for round in 0..12 {
        let mut child = prepare(&input, &root, &project)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Even rounds cut at a random moment of the start-up and first batch; odd rounds wait
        // until the run has committed something new, then cut it a little later, so kills land
        // both before and between commits whatever the machine's speed.
        let started = Instant::now();
        let wait_ms = if round % 2 == 0 {
            rng.below(300)
        } else {
            let cap = Duration::from_secs(60);
            while started.elapsed() < cap
                && child.try_wait().unwrap().is_none()
                && committed_records(&project) <= last
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            // A short cut relative to the whole run: on a fast or idle machine 150 ms let the
            // rest of the run finish before the kill, and later rounds had nothing left to cut.
            rng.below((full_run.as_millis() as u64 / 20).clamp(5, 150))
        };
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Killed before the schema was written: an empty database, which the next run sets up.
        if !project.join("roiscope.db").exists() || !has_table(&project, "runs") {
            continue;
        }
        assert_eq!(integrity(&project), "ok", "round {round}");
        let n = count(&project, "SELECT count(*) FROM records");
        assert!(
            n >= last,
            "round {round}: committed records never disappear"
        );
        let boxes_without_record = count(
            &project,
            "SELECT count(*) FROM boxes b WHERE NOT EXISTS \
             (SELECT 1 FROM records r WHERE r.id = b.record_id)",
        );
        assert_eq!(boxes_without_record, 0);
        let unfinished = count(
            &project,
            "SELECT count(*) FROM runs WHERE id = (SELECT max(id) FROM runs) \
             AND finished_at IS NULL",
        );
        if unfinished == 1 {
            cut_mid_run += 1;
            progressed += usize::from(n > last);
        }
        last = n;
    }
    eprintln!(
        "{cut_mid_run} of 12 kills cut a run short, {progressed} of them after committing \
         records (uninterrupted run {full_run:?})"
    );
    assert!(
        cut_mid_run >= 4 && progressed >= 2,
        "only {cut_mid_run} kills landed in the middle of a run, {progressed} after progress \
         (full run {full_run:?})"
    );
    ok(&mut prepare(&input, &root, &project));
    assert_eq!(
        count(&project, "SELECT count(*) FROM records"),
        expected_count
    );
    assert_eq!(
        export(&project, "seed-json", &tmp.path().join("killed.json")),
        expected_seed,
        "the resumed project holds exactly what an uninterrupted run gives"
    );
    assert_eq!(splits(&project), splits(&reference));
    assert_eq!(
        partial_files(&project),
        0,
        "no half-written file is left behind"
    );
}

/// A child `roiscope project edit` fed edits as fast as it takes them.
struct Editor {
    child: std::process::Child,
    acks: std::sync::mpsc::Receiver<Value>,
}

fn edit_line(n: usize) -> Value {
    let record = 1 + (n % 24);
    let status = ["accepted", "rejected", "needs-fix", "unreviewed"][n / 3 % 4];
    match n % 3 {
        0 => json!({"record": record, "edit": "set_status", "status": status}),
        1 => {
            let f = (n % 50) as f64 / 100.0;
            json!({"record": record, "edit": "set_box", "source": "corrected",
                   "box": [f, f, f + 0.5, f + 0.25]})
        }
        // Records 9 and 19 of the sample have plain-text answers: their diagnosis is the text.
        _ if record == 9 || record == 19 => {
            json!({"record": record, "edit": "set_diagnosis", "text": format!("edit number {n}")})
        }
        _ => json!({"record": record, "edit": "set_field", "name": "ROI Location",
                    "value": format!("edit number {n}")}),
    }
}

fn start_editor(project: &Path, edits: usize) -> (Editor, std::thread::JoinHandle<()>) {
    let mut child = roiscope()
        .args(["project", "edit", s(project), "--who", "kill-test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for n in 0..edits {
            if writeln!(stdin, "{}", edit_line(n)).is_err() {
                return; // the editor was killed
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, acks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    (Editor { child, acks }, writer)
}

/// Every acknowledged edit is in the history, in effect, with the value that was sent.
fn check_acknowledged(project: &Path, acked: &[(usize, i64)]) {
    let p = roiscope::data::store::Project::open(project).unwrap();
    let history = p.history(None).unwrap();
    for &(n, id) in acked {
        let e = history
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("acknowledged edit {id} (line {n}) is missing"));
        let sent = edit_line(n);
        assert_eq!(e.record_id, sent["record"].as_i64().unwrap());
        assert_eq!(e.state, "done");
        match sent["edit"].as_str().unwrap() {
            "set_status" => assert_eq!(e.after, sent["status"]),
            "set_box" => assert_eq!(e.after["box"], sent["box"]),
            "set_diagnosis" => assert_eq!(e.after, sent["text"]),
            _ => assert_eq!(e.after, sent["value"]),
        }
    }
    // The records show the newest edit in effect.
    for record in 1..=24 {
        let r = p.record(record).unwrap();
        if let Some(last) = history
            .iter()
            .rfind(|e| e.record_id == record && e.kind == "status")
        {
            assert_eq!(r.status.as_str(), last.after.as_str().unwrap());
        }
    }
}

fn sample_project(dir: &Path) -> std::path::PathBuf {
    let sample = sample_dir();
    let project = dir.join("project");
    ok(&mut prepare_cmd(
        &sample.join("raw_data.json"),
        &sample,
        &project,
    ));
    project
}

#[test]
fn kill_9_during_a_stream_of_edits_keeps_every_acknowledged_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut total_acked = 0;
    for round in 0..6 {
        let (mut editor, writer) = start_editor(&project, 100_000);
        let deadline = Instant::now() + Duration::from_millis(50 + rng.below(400));
        let mut acked = Vec::new();
        let mut line = 0;
        while Instant::now() < deadline {
            if let Ok(ack) = editor.acks.recv_timeout(Duration::from_millis(5)) {
                let id = ack["ok"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("edit failed: {ack}"));
                acked.push((line, id));
                line += 1;
            }
        }
        editor.child.kill().unwrap();
        editor.child.wait().unwrap();
        writer.join().unwrap();
        // Acknowledgements already in the pipe count too: they were printed after commit.
        while let Ok(ack) = editor.acks.recv_timeout(Duration::from_millis(200)) {
            acked.push((line, ack["ok"].as_i64().unwrap()));
            line += 1;
        }
        assert_eq!(integrity(&project), "ok", "round {round}");
        assert!(
            !acked.is_empty(),
            "round {round}: the editor committed nothing"
        );
        check_acknowledged(&project, &acked);
        total_acked += acked.len();
    }
    assert!(total_acked > 50, "{total_acked}");
}

#[test]
fn exports_while_another_process_edits_see_a_consistent_project() {
    let tmp = tempfile::tempdir().unwrap();
    let project = sample_project(tmp.path());
    let edits = 2000;
    let (mut editor, writer) = start_editor(&project, edits);
    let mut exports = 0;
    // Exports that finished while the editor was still writing.
    let mut overlapped = 0;
    let mut acked = Vec::new();
    while acked.len() < edits {
        let out = tmp.path().join(format!("export{exports}.jsonl"));
        let text = String::from_utf8(export(&project, "jsonl", &out)).unwrap();
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 24);
        exports += 1;
        while let Ok(ack) = editor.acks.try_recv() {
            acked.push((acked.len(), ack["ok"].as_i64().unwrap()));
        }
        if editor.child.try_wait().unwrap().is_none() {
            overlapped += 1;
        } else {
            while let Ok(ack) = editor.acks.recv_timeout(Duration::from_millis(200)) {
                acked.push((acked.len(), ack["ok"].as_i64().unwrap()));
            }
            break;
        }
    }
    writer.join().unwrap();
    assert!(editor.child.wait().unwrap().success());
    assert_eq!(acked.len(), edits);
    assert!(
        overlapped >= 1,
        "no export ran alongside the edits ({exports} exports)"
    );
    assert_eq!(integrity(&project), "ok");
    check_acknowledged(&project, &acked);
}
