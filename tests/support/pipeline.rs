//! The commands the pipeline tests run: a trained run, eval, infer (tests/infer_eval.rs,
//! tests/verify_gate.rs).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

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
