//! Long runs that never lose work, proved with real `roiscope train` child processes on the
//! sample project and a tiny random model: SIGINT and SIGTERM at random steps save and resume to
//! the parameters of an uninterrupted run; `kill -9` while checkpoints are written always leaves
//! a resumable run; a full disk keeps the last good checkpoint and names the path that failed;
//! a run resumes from its folder alone, refuses changed weights, and extends when asked.

#[path = "support/project.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use roiscope::model::folder::{init_model, InitSize};
use roiscope::train::checkpoint::{complete_checkpoints, is_complete, latest_checkpoint};
use roiscope::train::metrics::read_metrics;
use roiscope::train::trainer::Event;
use support::{roiscope, s, sample_dir};

/// A prepared copy of the sample project and a tiny random model, in `dir`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let project = dir.join("project");
    support::ok(
        support::prepare_cmd(&sample_dir().join("raw_data.json"), &sample_dir(), &project)
            .args(["--threads", "1"]),
    );
    let model = dir.join("model");
    init_model(InitSize::Tiny, &model, DType::F32, 0, |_, _| {}).unwrap();
    (project, model)
}

/// Accumulation and dropout on, so that a stop has to wait for a step boundary and resuming
/// has to restore the random state; checkpoints only as the test asks.
const SETTINGS: &str = "batch_size = 2\ngrad_accum = 2\nwarmup_steps = 1\nlora_r = 4\n\
    lora_dropout = 0.1\ncheckpoint_every = 0\ncheckpoint_minutes = 0.0\n";

/// [`SETTINGS`] with the keys of `extra` put over them.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let given: Vec<String> = extra.lines().map(key).collect();
    let mut text: String = SETTINGS
        .lines()
        .filter(|l| !given.contains(&key(l)))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    text += extra;
    let path = dir.join(format!("train-{}.toml", extra.len()));
    std::fs::write(&path, text).unwrap();
    path
}

fn train_new(project: &Path, model: &Path, run: &Path, config: &Path, steps: usize) -> Command {
    let mut cmd = roiscope();
    cmd.args(["train", "--project", s(project), "--model", s(model)])
        .args(["--out", s(run), "--config", s(config)])
        .args(["--max-steps", &steps.to_string()]);
    cmd
}

fn train_resume(run: &Path) -> Command {
    let mut cmd = roiscope();
    cmd.args(["train", "--resume", s(run)]);
    cmd
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every trainable tensor and optimiser moment of a checkpoint, by name.
fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for file in [
        "adapter/adapter_model.safetensors",
        "heads.safetensors",
        "optimizer.safetensors",
    ] {
        for (name, t) in candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap() {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            out.push((format!("{file}:{name}"), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Step events in the run's metrics so far.
fn steps_logged(run: &Path) -> usize {
    read_metrics(&run.join("metrics.jsonl")).map_or(0, |(lines, _)| {
        lines
            .iter()
            .filter(|l| matches!(l.event, Event::Step { .. }))
            .count()
    })
}

/// A seed for this test run, printed so that a failure can be repeated.
fn seed() -> u64 {
    let seed = std::env::var("ROISCOPE_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    eprintln!("ROISCOPE_TEST_SEED={seed}");
    seed
}

fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn wait_output(child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    let id = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        assert!(start.elapsed() < limit, "roiscope train {id} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

#[test]
fn sigint_and_sigterm_stop_save_and_resume_to_the_uninterrupted_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let config = write_config(tmp.path(), "");
    let total = 8;
    let straight = tmp.path().join("straight");
    support::ok(&mut train_new(&project, &model, &straight, &config, total));
    let want = tensors(&straight.join(format!("checkpoint-{total}")));
    let mut rng = seed();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let run = tmp.path().join(format!("run-{signal}"));
        let at = 1 + (next(&mut rng) % (total as u64 - 2)) as usize;
        let child = spawn(&mut train_new(&project, &model, &run, &config, total));
        let start = Instant::now();
        while steps_logged(&run) < at {
            assert!(start.elapsed() < Duration::from_secs(300), "no step {at}");
            std::thread::sleep(Duration::from_millis(2));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = wait_output(child, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "signal {signal}: {stderr}");
        let ckpt = latest_checkpoint(&run).unwrap();
        let stopped_at: usize = ckpt
            .to_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            stopped_at >= at && stopped_at < total,
            "signal at step {at}, saved at {stopped_at}"
        );
        assert!(
            stderr.contains(&format!(
                "stopped at step {stopped_at}; checkpoint {}",
                s(&ckpt)
            )) && stderr.contains(&format!("roiscope train --resume {}", s(&run))),
            "says where the checkpoint is and how to resume: {stderr}"
        );
        // The folder is all a resumed run needs.
        support::ok(&mut train_resume(&run));
        let got = tensors(&run.join(format!("checkpoint-{total}")));
        assert_eq!(got.len(), want.len());
        for ((name, a), (_, b)) in want.iter().zip(&got) {
            assert!(
                a == b,
                "signal {signal} at step {at}: {name} differs after resuming"
            );
        }
    }
    // The comparison is of trained parameters.
    let fresh = tmp.path().join("fresh");
    support::ok(&mut train_new(&project, &model, &fresh, &config, 1));
    assert_ne!(tensors(&fresh.join("checkpoint-1")), want);
}

#[test]
fn a_second_sigint_quits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    // Long steps (50 batches each): the first SIGINT waits for a step boundary far away.
    let config = write_config(tmp.path(), "grad_accum = 50\n");
    let run = tmp.path().join("run");
    let child = spawn(&mut train_new(&project, &model, &run, &config, 1000));
    let start = Instant::now();
    while steps_logged(&run) < 1 {
        assert!(start.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(2));
    }
    // Two signals sent at once may arrive as one: the second follows the first's message.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_output(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("SIGINT: stopping at the next step boundary"),
        "{stderr}"
    );
}

/// `kill -9` at random moments while checkpoints are written (every step, the oldest removed
/// as new ones complete): every time, the run resumes from its folder, and the run that went
/// through all the kills ends with the parameters of the run that was never killed.
#[test]
fn kill_9_while_checkpoints_are_written_always_leaves_a_resumable_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let config = write_config(tmp.path(), "checkpoint_every = 1\nkeep_checkpoints = 2\n");
    let total = 14;
    let straight = tmp.path().join("straight");
    support::ok(&mut train_new(&project, &model, &straight, &config, total));
    let want = tensors(&straight.join(format!("checkpoint-{total}")));
    let run = tmp.path().join("run");
    let mut rng = seed();
    let mut kills = 0;
    for round in 0..5 {
        let mut child = if round == 0 {
            spawn(&mut train_new(&project, &model, &run, &config, total))
        } else {
            spawn(&mut train_resume(&run))
        };
        // Wait for a checkpoint being written after a complete one exists, then kill within
        // the next few milliseconds.
        let start = Instant::now();
        let writing = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            let partial = std::fs::read_dir(&run).ok().is_some_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            });
            if partial && complete_checkpoints(&run).is_ok_and(|c| !c.is_empty()) {
                break true;
            }
            assert!(start.elapsed() < Duration::from_secs(300));
            std::thread::sleep(Duration::from_micros(200));
        };
        if !writing {
            break;
        }
        std::thread::sleep(Duration::from_micros(next(&mut rng) % 4000));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let latest = latest_checkpoint(&run).expect("a complete checkpoint is left");
        assert!(is_complete(&latest));
    }
    assert!(kills >= 2, "only {kills} kills landed while writing");
    support::ok(&mut train_resume(&run));
    let got = tensors(&run.join(format!("checkpoint-{total}")));
    for ((name, a), (_, b)) in want.iter().zip(&got) {
        assert!(a == b, "{name} differs after {kills} kills");
    }
    // Only the newest two are kept, and nothing half-written is left.
    let names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("checkpoint"))
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            format!("checkpoint-{}", total - 1),
            format!("checkpoint-{total}")
        ]
    );
}

/// A checkpoint folder whose files do not match its state (a copy cut short, a power loss) is
/// never picked: resume, infer and eval take the one before it.
#[test]
fn an_incomplete_checkpoint_is_never_picked() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let config = write_config(tmp.path(), "checkpoint_every = 1\n");
    let run = tmp.path().join("run");
    support::ok(&mut train_new(&project, &model, &run, &config, 2));
    let newest = run.join("checkpoint-2");
    assert_eq!(latest_checkpoint(&run).unwrap(), newest);
    let heads = newest.join("heads.safetensors");
    let bytes = std::fs::read(&heads).unwrap();
    std::fs::write(&heads, &bytes[..bytes.len() / 2]).unwrap();
    assert!(!is_complete(&newest));
    assert_eq!(latest_checkpoint(&run).unwrap(), run.join("checkpoint-1"));
    let picked = roiscope::infer::Checkpoint::resolve(&run).unwrap();
    assert_eq!(picked.dir, run.join("checkpoint-1"));
    // Resuming goes on from step 1 and rewrites step 2 whole.
    let out = support::ok(train_resume(&run).args(["--max-steps", "3"]));
    assert!(out.status.success());
    assert!(is_complete(&newest));
    assert!(is_complete(&run.join("checkpoint-3")));
}

/// Unmounts the test's tmpfs however the test ends.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk (a small tmpfs filled up): the checkpoint that does not fit fails with its path
/// named, the last good checkpoint stays complete, nothing half-written is left, and once there
/// is room the run resumes from it. Needs root for the mount; says so and passes otherwise.
#[test]
fn a_full_disk_keeps_the_last_good_checkpoint_and_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&disk)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mount(disk.clone());
    let config = write_config(tmp.path(), "checkpoint_every = 1\n");
    let run = disk.join("run");
    support::ok(&mut train_new(&project, &model, &run, &config, 2));
    // Fill the disk to the last byte.
    let filler = disk.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let byte = [7u8];
        while f.write_all(&byte).is_ok() {}
    }
    let out = train_resume(&run)
        .args(["--max-steps", "4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(s(&run.join(".checkpoint-3.partial")))
            && stderr.contains("No space left on device"),
        "names the path that failed: {stderr}"
    );
    assert!(
        stderr.contains("checkpoint-2"),
        "says what is kept: {stderr}"
    );
    assert_eq!(latest_checkpoint(&run).unwrap(), run.join("checkpoint-2"));
    assert!(is_complete(&run.join("checkpoint-2")));
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_file(&filler).unwrap();
    support::ok(train_resume(&run).args(["--max-steps", "4"]));
    assert!(is_complete(&run.join("checkpoint-4")));
}

/// `--resume RUN_DIR` alone continues a run (project, model folder, devices and settings come
/// from the run); a finished run extends with --max-steps or --config (only the settings that do
/// not change what was trained); a model folder whose weights changed is refused. The metrics
/// read back as typed events, per-task values under their task names.
#[test]
fn a_run_resumes_from_its_folder_alone_and_extends() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let config = write_config(tmp.path(), "");
    let run = tmp.path().join("run");
    support::ok(&mut train_new(&project, &model, &run, &config, 2));
    let out = support::ok(&mut train_resume(&run));
    assert!(String::from_utf8_lossy(&out.stderr).contains("done after 2 steps"));
    support::ok(train_resume(&run).args(["--max-steps", "3"]));
    assert!(is_complete(&run.join("checkpoint-3")));
    let longer = tmp.path().join("longer.toml");
    std::fs::write(&longer, "max_steps = 4\nkeep_checkpoints = 5\n").unwrap();
    support::ok(train_resume(&run).arg("--config").arg(&longer));
    assert!(is_complete(&run.join("checkpoint-4")));
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, "max_steps = 5\nlora_r = 8\n").unwrap();
    let err = support::fails(train_resume(&run).arg("--config").arg(&other));
    assert!(err.contains("not lora_r"), "{err}");
    // New weights in the model folder.
    std::fs::remove_dir_all(&model).unwrap();
    init_model(InitSize::Tiny, &model, DType::F32, 1, |_, _| {}).unwrap();
    let err = support::fails(train_resume(&run).args(["--max-steps", "5"]));
    assert!(
        err.contains("not those the run was started on") && err.contains("model.safetensors"),
        "{err}"
    );

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first_step: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "step")
        .unwrap();
    assert_eq!(first_step["schema"], 2);
    for key in ["loss", "weighted", "precision"] {
        for task in ["roi", "match", "lm"] {
            assert!(
                first_step[key][task].as_f64().unwrap().is_finite(),
                "{key}.{task}"
            );
        }
    }
    let (lines, unreadable) = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert!(unreadable.is_empty());
    let steps: Vec<usize> = lines
        .iter()
        .filter_map(|l| match l.event {
            Event::Step { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert!(lines.iter().all(|l| l.time > 1.7e9));
}

/// A record that fails in training (its training image went missing after prepare) is skipped,
/// counted and named in a warning; the run goes on to the end of its epoch.
#[test]
fn a_record_that_fails_in_training_is_skipped_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let p = roiscope::data::store::Project::open(&project).unwrap();
    let train =
        roiscope::train::data::load_examples(&p, roiscope::data::store::Split::Train).unwrap();
    let victim = &train[train.len() / 2];
    std::fs::remove_file(&victim.image).unwrap();
    // No negatives: only the record itself uses its image.
    let config = write_config(tmp.path(), "epochs = 1\nnegative_ratio = 0.0\n");
    let run = tmp.path().join("run");
    let out = support::ok(
        roiscope()
            .args(["train", "--project", s(&project), "--model", s(&model)])
            .args(["--out", s(&run), "--config", s(&config)]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (lines, _) = read_metrics(&run.join("metrics.jsonl")).unwrap();
    let warnings: Vec<&String> = lines
        .iter()
        .filter_map(|l| match &l.event {
            Event::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    let named = format!("record {} skipped (1 skipped so far", victim.record_id);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&named) && w.contains(s(&victim.image))),
        "{warnings:?}"
    );
    assert!(stderr.contains(&named), "{stderr}");
    assert!(lines
        .iter()
        .any(|l| matches!(l.event, Event::Finished { .. })));
}
