//! The commands the pipeline tests run: a trained run, eval, infer (tests/infer_eval.rs,
//! tests/verify_gate.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::DType;
use roiscope::model::folder::{init_model, InitSize};

pub fn roiscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roiscope"))
}

/// Runs `cmd`; fails the test with its stderr unless it succeeds.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `roiscope train` with `config` (TOML text) for `steps` steps into `run`.
pub fn train(project: &Path, model: &Path, run: &Path, config: &str, steps: usize) {
    let file = run.with_extension("toml");
    std::fs::write(&file, config).unwrap();
    ok(roiscope()
        .arg("train")
        .arg("--project")
        .arg(project)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(run)
        .arg("--config")
        .arg(&file)
        .args(["--max-steps", &steps.to_string()]));
}

/// `roiscope eval` on the val split, calibrating for `target` sensitivity; more arguments in
/// `extra`.
pub fn eval_calibrate(
    project: &Path,
    model: &Path,
    run: &Path,
    target: f64,
    extra: &[&str],
) -> Output {
    ok(roiscope()
        .arg("eval")
        .arg("--project")
        .arg(project)
        .arg("--model")
        .arg(model)
        .arg("--adapter")
        .arg(run)
        .args([
            "--split",
            "val",
            "--calibrate",
            "--target-sensitivity",
            &target.to_string(),
        ])
        .args(extra))
}

/// `input` (seed-format records over the sample images) prepared into `dir/project`, a tiny
/// random model in `dir/model`, and a run trained on it for two steps in `dir/run`.
pub fn trained_project(dir: &Path, input: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample");
    let project = dir.join("project");
    ok(roiscope()
        .args(["prepare", "-q", "--input"])
        .arg(input)
        .arg("--images")
        .arg(&sample)
        .arg("--project")
        .arg(&project));
    let model = dir.join("model");
    init_model(InitSize::Tiny, &model, DType::F32, 0, |_, _| {}).unwrap();
    let run = dir.join("run");
    train(
        &project,
        &model,
        &run,
        "batch_size = 2\ngrad_accum = 1\nlora_r = 4\n",
        2,
    );
    (project, model, run)
}
