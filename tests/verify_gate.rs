//! The verify step really gates (issue 7): a tiny model trained on the synthetic lesion task
//! (`roiscope synthetic`, whose diagnosis names where the blob lies), its threshold calibrated on
//! val by `roiscope eval --calibrate`; then on held-out test images the match head releases the
//! true diagnosis and withholds a deliberately mismatched one (another place), and
//! `roiscope infer --adapter` applies the same threshold.

use std::path::Path;
use std::process::Output;

#[path = "support/pipeline.rs"]
mod support;

use candle_core::{DType, Device};
use roiscope::data::image_io::{load_rgb8, LoadOptions};
use roiscope::data::store::{Project, Split};
use roiscope::infer::Pipeline;
use roiscope::train::data::load_examples;
use serde_json::Value;
use support::{eval_calibrate, ok, train};

fn run_with(args: &[&str], paths: &[&Path]) -> Output {
    ok(support::roiscope().args(args).args(paths))
}

/// Ignored: with the trainer of 2026-12-05, 150 steps at these settings left the match head at
/// AUC 0.52 on val, so the verdict could not flip. The match head learns the task since
/// 2026-12-06 (AUC 0.903 after 1,000 steps on 800 images, BENCHMARKS.md), but not in the 150
/// steps this test can afford in CI, and it has not been re-run at a length that would. Run with
/// `cargo test --test verify_gate -- --ignored` (about 3 minutes on 2 cores).
#[test]
#[ignore = "needs a trainer setting under which the synthetic match task is learnt (issue 5)"]
fn a_mismatched_diagnosis_flips_the_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let project = dir.join("project");
    let model = dir.join("model");
    let run = dir.join("run");
    run_with(
        &[
            "synthetic",
            "--count",
            "160",
            "--size",
            "64",
            "--seed",
            "1",
            "--out",
        ],
        &[&data],
    );
    ok(support::roiscope()
        .arg("prepare")
        .arg("--input")
        .arg(data.join("raw_data.json"))
        .arg("--images")
        .arg(&data)
        .arg("--project")
        .arg(&project)
        .args(["--split", "70,15,15"]));
    run_with(&["init-model", "--config", "tiny", "--out"], &[&model]);
    let config =
        "batch_size = 8\ngrad_accum = 1\nwarmup_steps = 10\nlr_lora = 1e-3\nlr_heads = 1e-3\n";
    train(&project, &model, &run, config, 150);
    eval_calibrate(&project, &model, &run, 0.9, &["--max-new-tokens", "24"]);
    let cal: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("calibration.json")).unwrap())
            .unwrap();
    let threshold = cal["threshold"].as_f64().unwrap();

    let pipeline = Pipeline::open(&model, &run, None, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        pipeline.threshold, threshold,
        "infer picks up the calibration"
    );
    let test = load_examples(&Project::open(&project).unwrap(), Split::Test).unwrap();
    assert!(test.len() >= 15, "{}", test.len());
    let (mut released_true, mut withheld_wrong, mut flipped) = (0, 0, 0);
    for (i, ex) in test.iter().enumerate() {
        let wrong = (1..test.len())
            .map(|k| &test[(i + k) % test.len()])
            .find(|o| o.answer != ex.answer)
            .unwrap();
        let img = load_rgb8(&ex.image, LoadOptions::default()).unwrap();
        let processed = pipeline.process(&img).unwrap();
        let scores = pipeline
            .score_pairs(&processed, &ex.question, &[&ex.answer, &wrong.answer])
            .unwrap();
        let verified = |s: f32| f64::from(s) >= threshold;
        let (t, w) = (
            verified(scores[0].match_score),
            verified(scores[1].match_score),
        );
        released_true += usize::from(t);
        withheld_wrong += usize::from(!w);
        flipped += usize::from(t && !w);
    }
    let n = test.len() as f64;
    eprintln!(
        "threshold {threshold:.3}: true released {released_true}, mismatched withheld \
         {withheld_wrong}, flipped {flipped} of {n}"
    );
    assert!(
        flipped as f64 >= 0.7 * n,
        "the verdict flipped on {flipped} of {n} test images"
    );

    // The same through the command line: a test image's own diagnosis cannot be forced, but the
    // verdict the command prints is its score against the calibrated threshold.
    let out = ok(support::roiscope()
        .arg("infer")
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(&run)
        .arg("--image")
        .arg(&test[0].image)
        .arg("--prompt")
        .arg(&test[0].question)
        .args(["--json", "--max-new-tokens", "24"]));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["threshold"].as_f64(), Some(threshold));
    let verified = line["match_score"].as_f64().unwrap() >= threshold
        && !line["generated"].as_str().unwrap().trim().is_empty();
    assert_eq!(
        line["verdict"],
        if verified { "verified" } else { "unverified" }
    );
}
