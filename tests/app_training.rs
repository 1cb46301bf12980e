//! The training dashboard driven through its real UI: a short run on a tiny random model starts
//! from the Start button, its step events reach the curves while the UI keeps drawing frames, and
//! Stop-and-save ends it with a checkpoint. A model folder that does not load is a message.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/app.rs"]
mod app_support;

use app_support::step_until;
use candle_core::DType;
use egui::Vec2;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use roiscope::app::sample::ensure_sample_project;
use roiscope::app::settings::Settings;
use roiscope::app::training::{Curves, RunState};
use roiscope::app::{Tab, Workbench};
use roiscope::model::folder::{init_model, InitSize};
use roiscope::model::quantized::WeightFormat;
use roiscope::train::trainer::TrainConfig;

fn harness(project: &Path, model: &Path) -> Harness<'static, Workbench> {
    let mut wb = Workbench::new(Settings::default());
    wb.open_project(project);
    wb.settings.model_folder = model.display().to_string();
    wb.tab = Tab::Training;
    wb.training.config = TrainConfig {
        max_steps: 40,
        batch_size: 2,
        grad_accum: 1,
        warmup_steps: 1,
        lora_r: 4,
        ..TrainConfig::default()
    };
    let mut h = Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .build_ui_state(|ui, wb: &mut Workbench| wb.ui(ui), wb);
    h.run_steps(2);
    h
}

#[test]
fn a_short_run_streams_curves_and_stops_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let project = ensure_sample_project(tmp.path().join("project")).unwrap();
    let model = tmp.path().join("model");
    init_model(InitSize::Tiny, &model, DType::F32, 0, |_, _| {}).unwrap();
    let mut h = harness(&project, &model);

    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(h.state().training.busy());
    // Frames keep coming while the trainer works: the UI never waits on it.
    let started = Instant::now();
    let slowest = step_until(&mut h, "two step events", Duration::from_secs(300), |wb| {
        wb.training.curves.len() >= 2
    });
    assert!(slowest < Duration::from_secs(2), "a frame took {slowest:?}");
    // For the frame log: how long the events had waited for a frame to take them.
    let waited = h.state().training.event_wait;
    let waited = waited.expect("the panel says how long its events waited");
    assert!(waited < started.elapsed());
    let c = &h.state().training.curves;
    assert!(c
        .loss
        .iter()
        .all(|l| l.len() >= 2 && l.iter().all(|v| v.is_finite())));
    assert!(c.total.iter().all(|v| v.is_finite()));
    assert!(c.precision[0][0] > 0.0 && c.lr_lora.len() >= 2 && c.total_steps == 40);

    h.get_by_label("Stop and save").click();
    step_until(&mut h, "the run to stop", Duration::from_secs(300), |wb| {
        !wb.training.busy()
    });
    let state = h.state().training.state.clone();
    assert!(
        matches!(&state, RunState::Ended(s) if s.contains("stopped")),
        "{state:?}"
    );
    let run = h.state().training.showing.clone().unwrap();
    assert!(run.starts_with(project.join("runs")));
    assert!(std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-")));

    // The run is listed and its curves come back from metrics.jsonl.
    h.run_steps(2);
    assert_eq!(h.state().training.runs, vec![run.clone()]);
    let restored = Curves::from_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(restored.steps, h.state().training.curves.steps);
    assert_eq!(restored.loss, h.state().training.curves.loss);

    // The prediction panel runs locate -> diagnose -> verify with the run's checkpoint.
    h.state_mut().tab = Tab::Review;
    h.run_steps(2);
    assert_eq!(
        h.state().predict.checkpoint,
        run.display().to_string(),
        "the latest run is the default"
    );
    // With the weights quantised to Q8_0 (the panel's Weights choice; the adapter merged in),
    // the diagnosis streams.
    h.state_mut().predict.weights = WeightFormat::Q8_0;
    h.run_steps(2);
    h.get_by_label("Run on this image").click();
    h.run_steps(2);
    step_until(&mut h, "the prediction", Duration::from_secs(300), |wb| {
        wb.predict.running.is_none() && wb.predict.outcome.is_some()
    });
    let (id, outcome) = h.state().predict.outcome.clone().unwrap();
    let outcome = outcome.expect("the pipeline runs");
    assert_eq!(id, h.state().record.as_ref().unwrap().id);
    assert_eq!(
        h.state().predict.partial,
        Some((id, outcome.generated.clone())),
        "the last streamed text is the diagnosis"
    );
    assert!((0.0..=1.0).contains(&outcome.match_score));
    // Its box is drawn on the canvas and can become the correction (after the panel's layout
    // settles: a bottom panel takes its height from the frame before).
    h.run_steps(3);
    h.get_by_label("Use box as correction").click();
    h.run_steps(2);
    let corrected = h
        .state()
        .record
        .as_ref()
        .unwrap()
        .get_box(roiscope::data::store::BoxSource::Corrected)
        .unwrap_or_else(|| panic!("{:?} {:?}", h.state().message, outcome.roi))
        .coords;
    for (c, p) in corrected.iter().zip(outcome.roi) {
        assert!(
            (c - p as f64).abs() < 1e-6,
            "{corrected:?} vs {:?}",
            outcome.roi
        );
    }
}

/// A stopped run goes on from its checkpoint (Continue run), here after a restart of the app and
/// with steps logged past the checkpoint (as when `roiscope train` is killed): the run's curves
/// are restored up to the checkpoint, the new steps join them and replace the stale ones, and
/// its metrics.jsonl gives back the same curves.
#[test]
fn a_stopped_run_continues_from_its_checkpoint_with_its_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let project = ensure_sample_project(tmp.path().join("project")).unwrap();
    let model = tmp.path().join("model");
    init_model(InitSize::Tiny, &model, DType::F32, 0, |_, _| {}).unwrap();
    let mut h = harness(&project, &model);
    assert!(
        h.get_by_label("Continue run")
            .accesskit_node()
            .is_disabled(),
        "nothing to continue yet"
    );
    h.get_by_label("Start").click();
    h.run_steps(2);
    step_until(&mut h, "three steps", Duration::from_secs(300), |wb| {
        wb.training.curves.len() >= 3
    });
    h.get_by_label("Stop and save").click();
    step_until(&mut h, "the run to stop", Duration::from_secs(300), |wb| {
        !wb.training.busy()
    });
    let run = h.state().training.showing.clone().unwrap();
    let stopped_at = h.state().training.checkpoint_step.expect("a checkpoint");
    assert_eq!(h.state().training.curves.len(), stopped_at);
    drop(h);

    // Two stale steps after the checkpoint, as a killed run leaves them.
    let metrics = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last_step: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["event"] == "step")
        .unwrap();
    let mut stale = String::new();
    for k in 1..=2 {
        let mut v = last_step.clone();
        v["step"] = (stopped_at + k).into();
        v["total"] = 123.0.into();
        stale += &format!("{v}\n");
    }
    std::fs::write(&metrics, text + &stale).unwrap();

    // A new session: the run is listed, its curves restored, and it continues.
    let mut h = harness(&project, &model);
    // The form holds other settings than the run's until the run is shown.
    h.state_mut().training.config.lora_r = 16;
    h.state_mut().training.config.max_steps = 7;
    let name = run.file_name().unwrap().to_string_lossy().into_owned();
    h.get_by_label(&name).click();
    // The curves are read on a worker thread.
    step_until(&mut h, "the curves", Duration::from_secs(60), |wb| {
        !wb.training.curves.is_empty()
    });
    let shown = &h.state().training.config;
    assert_eq!(
        (shown.lora_r, shown.max_steps),
        (4, 40),
        "the form shows the run's own settings"
    );
    assert_eq!(h.state().training.curves.len(), stopped_at + 2);
    assert_eq!(h.state().training.checkpoint_step, Some(stopped_at));
    h.get_by_label("Continue run").click();
    h.run_steps(2);
    assert!(h.state().training.busy());
    assert_eq!(
        h.state().training.curves.len(),
        stopped_at,
        "cut at the checkpoint"
    );
    step_until(&mut h, "new steps", Duration::from_secs(300), |wb| {
        wb.training.curves.len() >= stopped_at + 3
    });
    h.get_by_label("Stop and save").click();
    step_until(
        &mut h,
        "the run to stop again",
        Duration::from_secs(300),
        |wb| !wb.training.busy(),
    );
    let c = h.state().training.curves.clone();
    let expected: Vec<f64> = (1..=c.len()).map(|s| s as f64).collect();
    assert_eq!(c.steps, expected, "one point per step, in order");
    assert!(
        c.total.iter().all(|&t| t != 123.0),
        "the stale steps are gone"
    );
    assert_eq!(c.total_steps, 40);
    assert_eq!(h.state().training.checkpoint_step, Some(c.len()));
    assert_eq!(h.state().training.runs, vec![run.clone()], "the same run");
    let restored = Curves::from_metrics(&metrics).unwrap();
    assert_eq!(restored.steps, c.steps);
    assert_eq!(restored.total, c.total);
    assert_eq!(restored.loss, c.loss);
}

#[test]
fn a_model_folder_that_does_not_load_is_shown_and_the_app_lives() {
    let tmp = tempfile::tempdir().unwrap();
    let project = ensure_sample_project(tmp.path().join("project")).unwrap();
    // An empty folder: Start stays disabled and the tab says why.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut h = harness(&project, &empty);
    h.run_steps(2);
    let why =
        roiscope::app::model_folder::why_not_start(false, Some(&project), empty.to_str().unwrap())
            .expect("Start is disabled");
    assert!(why.contains("lacks config.json"), "{why}");
    h.get_by_label(&why);
    // A folder that looks complete but whose weights do not load: the run fails with the
    // reason and the window lives on.
    let model = tmp.path().join("no-model");
    std::fs::create_dir_all(&model).unwrap();
    let config = roiscope::model::folder::init_config(InitSize::Tiny);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(
        model.join("preprocessor_config.json"),
        roiscope::model::folder::preprocessor_json().to_string(),
    )
    .unwrap();
    let stray = candle_core::Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("stray".to_string(), stray)]),
        model.join("model.safetensors"),
    )
    .unwrap();
    let mut h = harness(&project, &model);
    h.get_by_label("Start").click();
    h.run_steps(2);
    step_until(&mut h, "the failure", Duration::from_secs(60), |wb| {
        !wb.training.busy()
    });
    let state = h.state().training.state.clone();
    assert!(
        matches!(&state, RunState::Failed(m) if m.contains("model folder")),
        "{state:?}"
    );
    // Still drawing, and the review tab still works.
    h.state_mut().tab = Tab::Review;
    h.run_steps(2);
    assert!(h.state().record.is_some());
}

/// 10,000 points on each of the 13 curves (the responsiveness case) draw, and the
/// dashboard says how many there are. How long such a frame takes is measured by
/// `scripts/bench-workbench training` (BENCHMARKS.md), not here; the curves are thinned for
/// drawing (`app::thin`, unit-tested there).
#[test]
fn ten_thousand_points_per_curve_draw() {
    use roiscope::train::trainer::Event;
    let mut wb = Workbench::new(Settings::default());
    wb.tab = Tab::Training;
    for step in 1..=10_000usize {
        let x = step as f64;
        wb.training.curves.push(&Event::Step {
            step,
            total_steps: 10_000,
            epoch: 0,
            loss: [1.0 / x.sqrt(), 0.7 / x.sqrt(), 9.0 / x.ln().max(1.0)],
            weighted: [0.5 / x.sqrt(), 0.3 / x.sqrt(), 4.0 / x.ln().max(1.0)],
            precision: [1.0, 1.0 + x * 1e-5, 1.0 - x * 1e-5],
            total: 5.0 / x.ln().max(1.0),
            lr_lora: 1e-4,
            lr_heads: 1e-3,
            grad_norm: 1.0,
            negatives: 1,
            samples_per_second: 2.0,
            tokens_per_second: 100.0,
            eta_seconds: 10.0,
        });
    }
    let mut h = Harness::builder()
        .with_size(Vec2::new(1500.0, 950.0))
        .build_ui_state(|ui, wb: &mut Workbench| wb.ui(ui), wb);
    h.run_steps(3);
    h.get_by_label("10000 points per curve");
}

/// The window's close button while a run trains: the close is held back and a dialog asks;
/// "Stop, save and close" stops the run at a step boundary with a checkpoint and then closes the
/// window. Without a run the close goes through at once.
#[test]
fn closing_the_window_while_training_asks_then_stops_and_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let project = ensure_sample_project(tmp.path().join("project")).unwrap();
    let model = tmp.path().join("model");
    init_model(InitSize::Tiny, &model, DType::F32, 0, |_, _| {}).unwrap();
    let mut h = harness(&project, &model);
    let commands = |h: &Harness<'static, Workbench>| -> Vec<egui::ViewportCommand> {
        h.output()
            .viewport_output
            .get(&egui::ViewportId::ROOT)
            .map(|v| v.commands.clone())
            .unwrap_or_default()
    };
    let request_close = |h: &mut Harness<'static, Workbench>| {
        h.input_mut()
            .viewports
            .entry(egui::ViewportId::ROOT)
            .or_default()
            .events
            .push(egui::ViewportEvent::Close);
        h.step();
    };
    // Idle: nothing is held back.
    request_close(&mut h);
    assert!(!commands(&h).contains(&egui::ViewportCommand::CancelClose));

    h.get_by_label("Start").click();
    h.run_steps(2);
    step_until(&mut h, "a step", Duration::from_secs(300), |wb| {
        wb.training.curves.len() >= 1
    });
    request_close(&mut h);
    assert!(commands(&h).contains(&egui::ViewportCommand::CancelClose));
    h.run_steps(2);
    assert!(h.state().training.confirm_close && h.state().training.busy());
    h.get_by_label("Stop, save and close").click();
    let mut closed = false;
    let start = Instant::now();
    while !closed {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the window never closed"
        );
        h.step();
        closed = commands(&h).contains(&egui::ViewportCommand::Close);
        std::thread::sleep(Duration::from_millis(10));
    }
    let state = h.state().training.state.clone();
    assert!(
        matches!(&state, RunState::Ended(s) if s.contains("stopped")),
        "{state:?}"
    );
    let run = h.state().training.showing.clone().unwrap();
    assert!(roiscope::train::checkpoint::latest_checkpoint(&run).is_ok());
}
