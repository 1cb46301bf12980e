//! The trainer as a user meets it: `roiscope train` on the bundled sample project with a tiny
//! random model (metrics, checkpoints in peft's layout), stopping on request, a non-finite loss,
//! and the batch layout (answer tokens only carry LM loss; negatives carry none).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use candle_core::{DType, Device};
use roiscope::data::store::{Project, Split};
use roiscope::model::folder::{init_model, InitSize, ModelFolder};
use roiscope::train::data::{build_sample, collate, load_examples};
use roiscope::train::devices::DeviceSpec;
use roiscope::train::lora;
use roiscope::train::trainer::{Control, Event, TrainConfig, Trainer};
use serde_json::Value;

fn roiscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roiscope"))
}

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample")
}

/// A prepared copy of the sample project and a tiny random model, in `dir`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let project = dir.join("project");
    let out = roiscope()
        .args(["prepare", "--input"])
        .arg(sample_dir().join("raw_data.json"))
        .arg("--images")
        .arg(sample_dir())
        .arg("--project")
        .arg(&project)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = dir.join("model");
    init_model(InitSize::Tiny, &model, DType::F32, 0, |_, _| {}).unwrap();
    (project, model)
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        max_steps: steps,
        batch_size: 2,
        grad_accum: 1,
        warmup_steps: 1,
        lora_r: 4,
        ..TrainConfig::default()
    }
}

#[test]
fn train_command_writes_metrics_and_peft_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let config_path = tmp.path().join("train.toml");
    std::fs::write(
        &config_path,
        "batch_size = 2\ngrad_accum = 1\nlora_r = 4\ncheckpoint_every = 1\n",
    )
    .unwrap();
    let run = tmp.path().join("run");
    let out = roiscope()
        .arg("train")
        .arg("--project")
        .arg(&project)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .arg("--config")
        .arg(&config_path)
        .args(["--max-steps", "2", "--devices", "cpu,cpu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let events: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "started",
            "step",
            "checkpoint",
            "step",
            "validation",
            "checkpoint",
            "finished"
        ]
    );
    assert_eq!(events[0]["devices"], serde_json::json!(["cpu", "cpu"]));
    let step = &events[1];
    for key in ["loss", "weighted", "precision"] {
        let v = step[key].as_object().unwrap();
        let tasks: Vec<&str> = v.keys().map(String::as_str).collect();
        assert_eq!(tasks, ["roi", "match", "lm"]);
        assert!(v.values().all(|x| x.as_f64().unwrap().is_finite()), "{key}");
    }
    for key in [
        "total",
        "lr_lora",
        "lr_heads",
        "samples_per_second",
        "tokens_per_second",
        "eta_seconds",
    ] {
        assert!(step[key].as_f64().unwrap().is_finite(), "{key}");
    }
    // The checkpoint's adapter loads into a fresh model; the heads are all there.
    let ckpt = run.join("checkpoint-2");
    let mut folder = ModelFolder::open(&model, DType::F32, &Device::Cpu).unwrap();
    let set = lora::load_peft(&mut folder.model, &ckpt.join("adapter"), &Device::Cpu).unwrap();
    assert_eq!(
        set.modules.len(),
        6,
        "2 layers x (q_proj, v_proj, gate_proj)"
    );
    let heads =
        candle_core::safetensors::load(ckpt.join("heads.safetensors"), &Device::Cpu).unwrap();
    assert!(heads.contains_key("task.log_vars") && heads.contains_key("roi.fc2.weight"));
    // The run folder is not reused.
    let again = roiscope()
        .arg("train")
        .arg("--project")
        .arg(&project)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

fn trainer(dir: &Path, config: TrainConfig) -> (Trainer, PathBuf) {
    let (project, model) = setup(dir);
    trainer_on(
        &project,
        &model,
        &dir.join("run"),
        config,
        &[DeviceSpec::Cpu],
    )
}

fn trainer_on(
    project: &Path,
    model: &Path,
    run: &Path,
    config: TrainConfig,
    devices: &[DeviceSpec],
) -> (Trainer, PathBuf) {
    let project = Project::open(project).unwrap();
    let examples = load_examples(&project, Split::Train).unwrap();
    let folder = ModelFolder::open(model, DType::F32, &Device::Cpu).unwrap();
    std::fs::create_dir_all(run).unwrap();
    (
        Trainer::new(config, folder, examples, run, devices).unwrap(),
        run.to_path_buf(),
    )
}

#[test]
fn stop_saves_within_one_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut t, run) = trainer(tmp.path(), config(50));
    let (events_tx, events_rx) = mpsc::channel();
    let (control_tx, control_rx) = mpsc::channel();
    control_tx.send(Control::Pause).unwrap();
    control_tx.send(Control::Resume).unwrap();
    control_tx.send(Control::Stop).unwrap();
    t.run(&events_tx, &control_rx).unwrap();
    drop(events_tx);
    let events: Vec<Event> = events_rx.iter().collect();
    assert!(matches!(events[1], Event::Paused { step: 0 }));
    assert!(matches!(events[2], Event::Resumed { step: 0 }));
    // The stop arrives before the next batch: no step is taken, a checkpoint is written.
    assert!(matches!(events[3], Event::Checkpoint { step: 0, .. }));
    assert!(matches!(events.last(), Some(Event::Stopped { step: 0 })));
    assert!(run
        .join("checkpoint-0/adapter/adapter_model.safetensors")
        .is_file());
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(20);
    c.lr_heads = 1e30;
    c.max_grad_norm = 1e30;
    c.checkpoint_every = 1;
    let (mut t, run) = trainer(tmp.path(), c);
    let (events_tx, events_rx) = mpsc::channel();
    let (_control_tx, control_rx) = mpsc::channel();
    let err = t.run(&events_tx, &control_rx).unwrap_err().to_string();
    assert!(err.contains("not finite"), "{err}");
    drop(events_tx);
    let events: Vec<Event> = events_rx.iter().collect();
    assert!(matches!(events.last(), Some(Event::Error { .. })));
    assert!(run.join("checkpoint-1/heads.safetensors").is_file());
}

#[test]
fn only_answer_tokens_carry_lm_loss_and_negatives_none() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let project = Project::open(&project).unwrap();
    let examples = load_examples(&project, Split::Train).unwrap();
    let folder = ModelFolder::open(&model, DType::F32, &Device::Cpu).unwrap();
    let (a, b) = (&examples[0], &examples[1]);
    let positive = build_sample(a, a, &folder.tokenizer, &folder.processor).unwrap();
    // A negative: a's text with b's image, re-processed (grid and pad count are b's).
    let negative = build_sample(a, b, &folder.tokenizer, &folder.processor).unwrap();
    let b_alone = build_sample(b, b, &folder.tokenizer, &folder.processor).unwrap();
    assert!(negative.negative && negative.roi.is_none());
    assert_eq!(negative.image.grid_thw, b_alone.image.grid_thw);
    let pad = folder.tokenizer.special().image_pad;
    let pads = |ids: &[u32]| ids.iter().filter(|&&t| t == pad).count();
    assert_eq!(pads(&negative.ids), pads(&b_alone.ids));

    let special = folder.tokenizer.special();
    let batch = collate(
        &[positive.clone(), negative],
        special.endoftext,
        pad,
        &Device::Cpu,
    )
    .unwrap();
    let shift = batch.input.seq_len() - positive.ids.len();
    let want: Vec<(usize, usize, u32)> = positive
        .answer
        .clone()
        .map(|p| (0, shift + p - 1, positive.ids[p]))
        .collect();
    assert_eq!(batch.lm_targets, want, "answer tokens of the positive only");
    let answer = folder
        .tokenizer
        .decode(&positive.ids[positive.answer.clone()])
        .unwrap();
    assert_eq!(answer, format!("{}<|im_end|>", a.answer));
    assert_eq!(batch.labels.to_vec1::<f32>().unwrap(), [1.0, 0.0]);
}

/// Every trainable tensor of a checkpoint, by name.
fn checkpoint_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for file in [
        "adapter/adapter_model.safetensors",
        "heads.safetensors",
        "optimizer.safetensors",
    ] {
        let t = candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap();
        for (name, tensor) in t {
            out.push((
                format!("{file}:{name}"),
                tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Stopping at step 2 and resuming gives bit-identical parameters (and optimiser moments) at
/// step 4 to the uninterrupted run, with accumulation, dropout and negatives all on.
#[test]
fn resuming_repeats_the_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(4);
    c.grad_accum = 2;
    c.checkpoint_every = 2;
    c.lora_dropout = 0.1;
    let (mut t, run) = trainer(tmp.path(), c);
    let (events_tx, _events_rx) = mpsc::channel();
    let (_control_tx, control_rx) = mpsc::channel();
    t.run(&events_tx, &control_rx).unwrap();
    drop(t);
    let straight = checkpoint_tensors(&run.join("checkpoint-4"));

    // A second run folder holding only the step-2 checkpoint, as a run stopped there would.
    let stopped = tmp.path().join("stopped");
    std::fs::create_dir_all(&stopped).unwrap();
    let copy = |from: &Path, to: &Path| {
        Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
    };
    copy(&run.join("checkpoint-2"), &stopped.join("checkpoint-2"));
    let project = Project::open(&tmp.path().join("project")).unwrap();
    let examples = load_examples(&project, Split::Train).unwrap();
    let folder = ModelFolder::open(&tmp.path().join("model"), DType::F32, &Device::Cpu).unwrap();
    let mut resumed = Trainer::resume(folder, examples, &stopped, &[DeviceSpec::Cpu]).unwrap();
    resumed.run(&events_tx, &control_rx).unwrap();
    let again = checkpoint_tensors(&stopped.join("checkpoint-4"));
    assert_eq!(straight.len(), again.len());
    for ((name, a), (_, b)) in straight.iter().zip(&again) {
        assert!(a == b, "{name} differs after resuming");
    }
    // And the step-2 state differs from step 4: the test compares something that moved.
    assert_ne!(checkpoint_tensors(&run.join("checkpoint-2")), straight);
}

/// Data parallel: two CPU replicas, each on its half of every batch, end with the parameters of
/// one replica on the whole batch (to 1e-6), with dropout, negatives and accumulation on.
#[test]
fn two_replicas_train_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let mut c = config(4);
    c.batch_size = 4;
    c.grad_accum = 2;
    c.checkpoint_every = 1;
    // Step 1's checkpoint is compared below: keep all four.
    c.keep_checkpoints = 4;
    c.lora_dropout = 0.1;
    c.negative_ratio = 0.5;
    let params = |dir: &Path| -> Vec<(String, Vec<f32>)> {
        checkpoint_tensors(dir)
            .into_iter()
            .filter(|(name, _)| !name.starts_with("optimizer"))
            .collect()
    };
    let mut runs = Vec::new();
    for (name, devices) in [
        ("one", vec![DeviceSpec::Cpu]),
        ("two", vec![DeviceSpec::Cpu, DeviceSpec::Cpu]),
    ] {
        let (mut t, run) = trainer_on(
            &project,
            &model,
            &tmp.path().join(name),
            c.clone(),
            &devices,
        );
        let (events_tx, events_rx) = mpsc::channel();
        let (_control_tx, control_rx) = mpsc::channel();
        t.run(&events_tx, &control_rx).unwrap();
        drop(events_tx);
        let negatives: usize = events_rx
            .iter()
            .map(|e| match e {
                Event::Step { negatives, .. } => negatives,
                _ => 0,
            })
            .sum();
        assert!(negatives > 0, "the comparison must include negatives");
        runs.push(run);
    }
    let (one, two) = (
        params(&runs[0].join("checkpoint-4")),
        params(&runs[1].join("checkpoint-4")),
    );
    assert_eq!(one.len(), two.len());
    // Rounding only: relative to the parameter where it is above 1 (the match head's agreement
    // weights are about -36, where one f32 step is 3.8e-6), and 3e-6 rather than the issue's
    // 1e-6: since the text poolings learn (2026-12-06) their weights differ by up to 2.1e-6
    // after 4 steps, their gradients being small differences of terms weighted 36x, which the
    // two replicas sum in another order. 5e-6 since the gemm kernels of an AVX2 CPU (AMD EPYC,
    // 2026-12-08) round otherwise than AVX-512's: the ROI pooling's fc1 then differed by 3.006e-6.
    let mut worst = (0f32, String::new());
    for ((name, a), (other, b)) in one.iter().zip(&two) {
        assert_eq!(name, other);
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs() / x.abs().max(1.0);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    assert!(worst.0 <= 5e-6, "largest parameter difference {worst:?}");
    // The parameters moved between step 1 and 4: the comparison is of a trained state.
    assert_ne!(params(&runs[0].join("checkpoint-1")), one);
}

/// DESIGN 4.5: the seed pooled both heads over the whole sequence, answer included, which does
/// not exist at inference. The ROI head reads image-token states only, and in a causal model
/// those do not depend on the text after them: the same image with another record's question and
/// answer (another length, so other padding too) gives the same box.
#[test]
fn the_roi_box_does_not_depend_on_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, _) = trainer(tmp.path(), config(1));
    let project = Project::open(&tmp.path().join("project")).unwrap();
    let examples = load_examples(&project, Split::Train).unwrap();
    let (a, b) = (&examples[0], &examples[1]);
    assert_ne!(a.answer.len(), b.answer.len());
    let p = t.predict(&[(a, a), (b, a)]).unwrap();
    for i in 0..4 {
        assert!((p[0].roi[i] - p[1].roi[i]).abs() < 1e-5, "{p:?}");
    }
    // The match head does read the text.
    assert_ne!(p[0].match_probability, p[1].match_probability);
}

/// `epochs` means what it says when accumulation does not divide an epoch: 10 examples in
/// batches of 2 with 4 batches a step is 2 steps an epoch (4 batches, then the 1 left), 6 steps
/// for 3 epochs, each step within one epoch (it used to run on into 4.8 epochs).
#[test]
fn accumulation_never_runs_past_the_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, model) = setup(tmp.path());
    let project = Project::open(&project).unwrap();
    let mut examples = load_examples(&project, Split::Train).unwrap();
    assert!(examples.len() >= 10);
    examples.truncate(10);
    let folder = ModelFolder::open(&model, DType::F32, &Device::Cpu).unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let c = TrainConfig {
        epochs: 3,
        max_steps: 0,
        grad_accum: 4,
        ..config(0)
    };
    let mut t = Trainer::new(c, folder, examples, &run, &[DeviceSpec::Cpu]).unwrap();
    assert_eq!(t.total_steps(), 6);
    let (events_tx, events_rx) = mpsc::channel();
    let (_control_tx, control_rx) = mpsc::channel();
    t.run(&events_tx, &control_rx).unwrap();
    drop(events_tx);
    let epochs: Vec<(usize, usize)> = events_rx
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, epoch, .. } => Some((step, epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]);
}
