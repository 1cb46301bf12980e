//! locate -> diagnose -> verify and evaluation as a user meets them: the sample project, a tiny
//! random model trained for two steps, `roiscope eval --calibrate`, `roiscope infer --adapter`
//! with overlays; strict checkpoint and heads loading; the seed's head layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[path = "support/pipeline.rs"]
mod support;

use candle_core::{DType, Device, Tensor};
use roiscope::eval::metrics;
use roiscope::infer::heads::{Heads, HeadsLayout};
use roiscope::infer::Checkpoint;
use roiscope::train::heads::{Region, KEY_DIM, POSITION_FEATURES, TEXT_POOLS};
use serde_json::Value;
use support::{eval_calibrate, ok, roiscope, trained_project};

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample")
}

/// Prepared sample project, tiny model, and a run trained for two steps.
fn trained(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    trained_project(dir, &sample_dir().join("raw_data.json"))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn train_eval_calibrate_and_infer_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model, run) = trained(tmp.path());

    // eval on val with calibration: report files, numbers consistent with the metric code.
    let report_dir = tmp.path().join("report");
    let dir_arg = report_dir.to_str().unwrap();
    let out = eval_calibrate(
        &project,
        &model,
        &run,
        0.95,
        &["--out", dir_arg, "--max-new-tokens", "6"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("match: AUC"));
    let report = read_json(&report_dir.join("report.json"));
    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("ROC") && html.contains("data:image/png;base64,")
    );
    let cases = report["cases"].as_array().unwrap();
    let summary = &report["summary"];
    assert_eq!(summary["records"].as_u64().unwrap() as usize, cases.len());
    assert!(!cases.is_empty());
    assert_eq!(summary["errors"], 0);
    // Recompute the summary from the cases with the metric code.
    let f = |c: &Value, k: &str| c[k].as_f64();
    let ious: Vec<f64> = cases.iter().filter_map(|c| f(c, "iou")).collect();
    assert_eq!(summary["roi"]["mean_iou"].as_f64(), metrics::mean(&ious));
    for c in cases {
        let truth: Vec<f64> = serde_json::from_value(c["truth"].clone()).unwrap();
        let pred: Vec<f64> = serde_json::from_value(c["predicted"].clone()).unwrap();
        let want = metrics::iou(
            [truth[0], truth[1], truth[2], truth[3]],
            [pred[0], pred[1], pred[2], pred[3]],
        );
        assert_eq!(f(c, "iou"), Some(want));
        let (r, g) = (
            c["reference"].as_str().unwrap(),
            c["generated"].as_str().unwrap(),
        );
        assert_eq!(f(c, "rouge_l"), Some(metrics::rouge_l(r, g)));
        assert_eq!(f(c, "bleu4"), Some(metrics::bleu4(r, g)));
    }
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    for c in cases {
        scores.push(f(c, "true_pair_score").unwrap());
        labels.push(true);
        scores.push(f(c, "mismatched_pair_score").unwrap());
        labels.push(false);
    }
    assert_eq!(
        summary["matching"]["auc"].as_f64(),
        metrics::roc_auc(&scores, &labels)
    );
    // The calibration is stored in the run and reaches the target on val.
    let cal = read_json(&run.join("calibration.json"));
    let threshold = cal["threshold"].as_f64().unwrap();
    assert_eq!(
        Some(threshold),
        metrics::threshold_for_sensitivity(&scores, &labels, 0.95)
    );
    assert_eq!(summary["matching"]["threshold"].as_f64(), Some(threshold));
    assert!(cal["sensitivity"].as_f64().unwrap() >= 0.95);
    assert_eq!(cal["checkpoint"], "checkpoint-2");

    // infer: two good images and a broken one; JSON lines, overlays, the run's threshold.
    let images = sample_dir().join("images");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let overlays = tmp.path().join("overlays");
    let out = ok(roiscope()
        .arg("infer")
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(run.join("checkpoint-2"))
        .arg("--image")
        .arg(&names[0])
        .arg(&broken)
        .arg(&names[1])
        .arg("--overlay")
        .arg(&overlays)
        .args(["--json", "--max-new-tokens", "6"]));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1]["error"].as_str().unwrap().contains("broken.png"));
    for line in [&lines[0], &lines[2]] {
        assert!(line["error"].is_null());
        assert_eq!(line["threshold"].as_f64(), Some(threshold));
        let score = line["match_score"].as_f64().unwrap();
        let empty = line["generated"].as_str().unwrap().trim().is_empty();
        let verified = score >= threshold && !empty;
        assert_eq!(
            line["verdict"],
            if verified { "verified" } else { "unverified" }
        );
        assert_eq!(line["diagnosis"].is_null(), !verified);
        assert!(line["generated"].is_string());
        let roi: Vec<f64> = serde_json::from_value(line["roi"].clone()).unwrap();
        assert!(roi[0] < roi[2] && roi[1] < roi[3] && roi.iter().all(|v| (0.0..=1.0).contains(v)));
        let px: Vec<u32> = serde_json::from_value(line["box_px"].clone()).unwrap();
        let (w, h) = (
            line["width"].as_u64().unwrap() as u32,
            line["height"].as_u64().unwrap() as u32,
        );
        assert!(px[0] + px[2] <= w && px[1] + px[3] <= h);
        for k in [
            "preprocess",
            "prefill",
            "locate",
            "decode",
            "verify",
            "total",
        ] {
            assert!(line["timings"][k].as_f64().unwrap() >= 0.0, "{k}");
        }
        let overlay = image::open(line["overlay"].as_str().unwrap()).unwrap();
        assert_eq!(overlay.width(), w);
        assert!(overlay.height() > h, "caption band on top");
    }

    // --threshold overrides the calibration: 1.0 withholds everything that scores below it.
    let out = ok(roiscope()
        .arg("infer")
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(&run)
        .arg("--image")
        .arg(&names[0])
        .args(["--json", "--max-new-tokens", "4", "--threshold", "1.0"]));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["verdict"], "unverified");
    assert!(line["diagnosis"].is_null());
}

#[test]
fn missing_checkpoints_and_bad_heads_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Checkpoint::resolve(&tmp.path().join("nope")).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"));
    let err = Checkpoint::resolve(tmp.path()).unwrap_err();
    assert!(format!("{err:#}").contains("checkpoint-<step>"), "{err:#}");
    let ckpt = tmp.path().join("checkpoint-3");
    std::fs::create_dir_all(ckpt.join("adapter")).unwrap();
    let err = format!("{:#}", Checkpoint::resolve(tmp.path()).unwrap_err());
    assert!(
        err.contains("heads.safetensors") && err.contains("adapter_model.safetensors"),
        "{err}"
    );

    // A heads file with a tensor missing, one misshapen and one extra: all three named.
    let hidden = 8;
    let mut t = roiscope_heads(hidden, 1);
    t.remove("match.fc2.bias");
    t.insert(
        "roi.fc1.bias".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "roi.extra".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    let file = tmp.path().join("heads.safetensors");
    candle_core::safetensors::save(&t, &file).unwrap();
    let err = format!(
        "{:#}",
        Heads::load(&file, hidden, &Device::Cpu).err().unwrap()
    );
    for name in [
        "match.fc2.bias is missing",
        "roi.fc1.bias has shape",
        "roi.extra is unexpected",
    ] {
        assert!(err.contains(name), "{err}");
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic values without a random generator: a scrambled sine.
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 12.9898 + seed as f64 * 78.233).sin() * 0.5) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A roiscope heads state dict with deterministic values.
fn roiscope_heads(hidden: usize, seed: u64) -> HashMap<String, Tensor> {
    let text_width = TEXT_POOLS * hidden;
    let image_width = 2 * (hidden + POSITION_FEATURES);
    let key_width = hidden + POSITION_FEATURES;
    let mut shapes: Vec<(String, Vec<usize>)> = [
        ("roi.pool.fc1.weight", vec![512, hidden]),
        ("roi.pool.fc1.bias", vec![512]),
        ("roi.pool.fc2.weight", vec![1, 512]),
        ("roi.fc1.weight", vec![512, hidden]),
        ("roi.fc1.bias", vec![512]),
        ("roi.locus.weight", vec![512, 4]),
        ("roi.fc2.weight", vec![4, 512]),
        ("roi.fc2.bias", vec![4]),
        ("match.pool.fc1.weight", vec![512, hidden]),
        ("match.pool.fc1.bias", vec![512]),
        ("match.pool.fc2.weight", vec![1, 512]),
        ("match.fc1.weight", vec![256, hidden]),
        ("match.fc1.bias", vec![256]),
        ("match.fc2.weight", vec![1, 256]),
        ("match.fc2.bias", vec![1]),
        ("match.text.weight", vec![256, text_width]),
        ("match.query.weight", vec![KEY_DIM, text_width]),
        ("match.key.weight", vec![KEY_DIM, key_width]),
        ("match.image.weight", vec![256, image_width]),
        ("task.log_vars", vec![3]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    for i in 0..TEXT_POOLS {
        shapes.push((format!("match.text_pool.{i}.fc1.weight"), vec![512, hidden]));
        shapes.push((format!("match.text_pool.{i}.fc1.bias"), vec![512]));
        shapes.push((format!("match.text_pool.{i}.fc2.weight"), vec![1, 512]));
    }
    shapes
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| (name.clone(), randn(shape, seed * 100 + i as u64)))
        .collect()
}

/// The seed's `Qwen3VLMultiTask` state dict (one shared pooling with a last-layer bias,
/// `Sequential` indices) loads onto roiscope's heads: the match logits equal those of roiscope
/// heads holding the same weights, and the dropped pooling bias changes nothing.
#[test]
fn seed_head_layout_maps_onto_roiscope_heads() {
    let hidden = 16;
    let ours = roiscope_heads(hidden, 3);
    let mut seed: HashMap<String, Tensor> = HashMap::new();
    let g = |k: &str| ours[k].clone();
    seed.insert(
        "spatial_pooler.attn.0.weight".into(),
        g("match.pool.fc1.weight"),
    );
    seed.insert(
        "spatial_pooler.attn.0.bias".into(),
        g("match.pool.fc1.bias"),
    );
    seed.insert(
        "spatial_pooler.attn.2.weight".into(),
        g("match.pool.fc2.weight"),
    );
    seed.insert("spatial_pooler.attn.2.bias".into(), randn(&[1], 9));
    seed.insert("task_heads.roi_head.0.weight".into(), g("roi.fc1.weight"));
    seed.insert("task_heads.roi_head.0.bias".into(), g("roi.fc1.bias"));
    seed.insert("task_heads.roi_head.3.weight".into(), g("roi.fc2.weight"));
    seed.insert("task_heads.roi_head.3.bias".into(), g("roi.fc2.bias"));
    seed.insert(
        "task_heads.match_head.0.weight".into(),
        g("match.fc1.weight"),
    );
    seed.insert("task_heads.match_head.0.bias".into(), g("match.fc1.bias"));
    seed.insert(
        "task_heads.match_head.2.weight".into(),
        g("match.fc2.weight"),
    );
    seed.insert("task_heads.match_head.2.bias".into(), g("match.fc2.bias"));
    seed.insert(
        "loss_log_vars".into(),
        Tensor::new(&[0.1f32, -0.2, 0.3], &Device::Cpu).unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("seed_heads.safetensors");
    candle_core::safetensors::save(&seed, &file).unwrap();
    let imported = Heads::load(&file, hidden, &Device::Cpu).unwrap();
    assert_eq!(imported.layout, HeadsLayout::Seed);
    assert_eq!(imported.log_vars, [0.1, -0.2, 0.3]);
    // Nor a text-image comparison (imported with a zero text projection): compare without it.
    let mut ours = ours;
    ours.insert(
        "match.text.weight".into(),
        Tensor::zeros((256, TEXT_POOLS * hidden), DType::F32, &Device::Cpu).unwrap(),
    );
    let reference =
        Heads::from_tensors(&ours, hidden, &Device::Cpu, HeadsLayout::Roiscope).unwrap();
    let states = randn(&[2, 5, hidden], 11);
    let valid = Tensor::new(
        &[[0f32, 1., 1., 1., 1.], [1., 1., 1., 1., 1.]],
        &Device::Cpu,
    )
    .unwrap();
    // The seed's heads have no locus or text comparison (imported with zero weights): compare
    // with no image and an arbitrary ROI reading, which must not matter.
    let no_image = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let coords = Tensor::zeros((2, 5, 2), DType::F32, &Device::Cpu).unwrap();
    let region = Region {
        pooled: randn(&[2, hidden], 12),
        locus: randn(&[2, 4], 13),
    };
    let a: Vec<f32> = imported
        .matcher
        .forward(&states, &valid, &no_image, &states, &coords, &region)
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = reference
        .matcher
        .forward(&states, &valid, &no_image, &states, &coords, &region)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
    // The seed's shared pooling feeds the ROI head too.
    let (pa, _) = imported.roi.pool.forward(&states, &valid).unwrap();
    let (pb, _) = reference.matcher.pool.forward(&states, &valid).unwrap();
    let d: f32 = (pa - pb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 1e-6);

    // An incomplete seed file names what it lacks.
    seed.remove("task_heads.match_head.2.bias");
    candle_core::safetensors::save(&seed, &file).unwrap();
    let err = format!(
        "{:#}",
        Heads::load(&file, hidden, &Device::Cpu).err().unwrap()
    );
    assert!(err.contains("task_heads.match_head.2.bias"), "{err}");
}
