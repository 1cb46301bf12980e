#![allow(dead_code)] // each user of this module reads a different part of it
//! The trainer's learning proof, shared by `tests/learning.rs` (a short run in CI) and
//! `examples/learn_synthetic.rs` (the full run recorded in BENCHMARKS.md): train a tiny random
//! Qwen3-VL on a synthetic task (`data::synthetic`: where a blob lies, or what kind a finding is),
//! then score the ROI head (IoU) and the match head (AUC) on a held-out set drawn with another
//! seed, beside trivial baselines: always the training set's mean box, a text-only scorer and an
//! image-only scorer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use candle_core::{DType, Device};
use roiscope::data::prepare::{prepare, PrepareOptions};
use roiscope::data::store::{Project, Split, SplitRatios};
use roiscope::data::synthetic::{
    place_of, write_set, SyntheticConfig, SyntheticTask, DIAGNOSIS_FIELD,
};
use roiscope::data::synthetic_kind::kind_of;
use roiscope::eval::metrics::{iou, roc_auc};
use roiscope::model::folder::{init_model, InitSize, ModelFolder};
use roiscope::train::data::{load_examples, Example};
use roiscope::train::devices::DeviceSpec;
use roiscope::train::trainer::{Event, TrainConfig, Trainer};

pub struct Setup {
    pub task: SyntheticTask,
    pub train_images: usize,
    pub test_images: usize,
    pub size: u32,
    pub config: TrainConfig,
    /// Seeds the training images (`seed`), the held-out ones (`seed + 1`) and the random
    /// model (`seed - 1`, so seed 1 is the run BENCHMARKS.md records first); at least 1. The
    /// data order comes from `config.seed`.
    pub seed: u64,
}

#[derive(Debug)]
pub struct Outcome {
    pub mean_iou: f64,
    /// Share of held-out images whose predicted box has IoU >= 0.5.
    pub iou_at_half: f64,
    /// Mean IoU of always answering the training set's mean box.
    pub mean_box_iou: f64,
    pub auc: f64,
    /// AUC against clear mismatches: each image with a text that names another kind (kind
    /// task), or a place not beside its own (place task; see [`mismatch`]). The bar is on this.
    pub far_auc: f64,
    /// The same pairs scored by a text-only scorer (how often the text is a training image's
    /// diagnosis) and an image-only scorer (the area of the predicted box; any score of the
    /// image alone gives an image's true and mismatched pair the same score, so 0.5): what the
    /// match AUC would be without comparing the two.
    pub text_only_auc: f64,
    pub image_only_auc: f64,
    /// Mean match probability on true pairs and on swapped pairs, and the standard deviation over
    /// all of them (0: the head gives every pair the same score).
    pub match_means: [f64; 2],
    pub match_std: f64,
    pub first_loss: [f64; 3],
    pub last_loss: [f64; 3],
    pub steps: usize,
    pub seconds: f64,
}

/// Writes a synthetic set into `dir/data` and prepares it into `dir/project` (every record in
/// the train split); its examples.
pub fn synthetic_examples(
    dir: &Path,
    task: SyntheticTask,
    count: usize,
    size: u32,
    seed: u64,
) -> Vec<Example> {
    let data = dir.join("data");
    let config = SyntheticConfig {
        count,
        size,
        seed,
        task,
    };
    write_set(&data, config, |_, _| {}).unwrap();
    let options = PrepareOptions {
        input: data.join("raw_data.json"),
        images: data.clone(),
        project: dir.join("project"),
        diagnosis_field: DIAGNOSIS_FIELD.into(),
        threads: 2,
        skip_unboxed: false,
        ratios: SplitRatios([1.0, 0.0, 0.0]),
        max_pixels: 100_000_000,
        apply_changes: false,
        stay_in_root: false,
    };
    prepare(&options, &mut |_| {}).unwrap();
    let project = Project::open(&dir.join("project")).unwrap();
    let examples = load_examples(&project, Split::Train).unwrap();
    assert_eq!(examples.len(), count);
    examples
}

pub fn run(dir: &Path, setup: &Setup, mut on_step: impl FnMut(&Event)) -> Outcome {
    let train = synthetic_examples(
        &dir.join("train"),
        setup.task,
        setup.train_images,
        setup.size,
        setup.seed,
    );
    let test = synthetic_examples(
        &dir.join("test"),
        setup.task,
        setup.test_images,
        setup.size,
        setup.seed + 1,
    );
    let model_dir: PathBuf = dir.join("model");
    init_model(
        InitSize::Tiny,
        &model_dir,
        DType::F32,
        setup.seed - 1,
        |_, _| {},
    )
    .unwrap();
    let folder = ModelFolder::open(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let mean_box = {
        let mut m = [0f64; 4];
        for e in &train {
            let r = e.roi.expect("every synthetic record has a box");
            for i in 0..4 {
                m[i] += f64::from(r[i]) / train.len() as f64;
            }
        }
        m
    };
    let text_prior = text_prior(&train);
    let mut trainer = Trainer::new(
        setup.config.clone(),
        folder,
        train,
        &dir.join("run"),
        &[DeviceSpec::Cpu],
    )
    .unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    let (_control_tx, control_rx) = mpsc::channel::<roiscope::train::trainer::Control>();
    let started = std::time::Instant::now();
    let mut losses = vec![];
    std::thread::scope(|scope| {
        let trainer = &mut trainer;
        let worker = scope.spawn(move || trainer.run(&events_tx, &control_rx));
        // The channel closes when the run ends.
        for event in events_rx.iter() {
            on_step(&event);
            if let Event::Step { loss, .. } = event {
                losses.push(loss);
            }
        }
        worker.join().unwrap().unwrap();
    });
    {
        let seconds = started.elapsed().as_secs_f64();
        // Every held-out image with its own text (a true pair), with the text of the next image
        // that says something else (a swapped pair), and with a clear mismatch.
        let mut pairs: Vec<(&Example, &Example)> = test.iter().map(|e| (e, e)).collect();
        for (i, e) in test.iter().enumerate() {
            let other = (1..test.len())
                .map(|k| &test[(i + k) % test.len()])
                .find(|o| o.answer != e.answer)
                .unwrap();
            pairs.push((other, e));
        }
        for (i, e) in test.iter().enumerate() {
            pairs.push((mismatch(setup.task, &test, i), e));
        }
        let predictions = trainer.predict(&pairs).unwrap();
        let (true_pairs, rest) = predictions.split_at(test.len());
        let (swapped, far) = rest.split_at(test.len());
        let ious: Vec<f64> = test
            .iter()
            .zip(true_pairs)
            .map(|(e, p)| iou(p.roi.map(f64::from), e.roi.unwrap().map(f64::from)))
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let baseline: Vec<f64> = test
            .iter()
            .map(|e| iou(mean_box, e.roi.unwrap().map(f64::from)))
            .collect();
        let probs = |p: &[roiscope::train::replica::Prediction]| -> Vec<f64> {
            p.iter().map(|p| f64::from(p.match_probability)).collect()
        };
        // The baselines on the clear-mismatch pairs: the text's prior, and the image's own box
        // area (the same for its true and its mismatched pair).
        let prior = |e: &Example| text_prior.get(&e.answer).copied().unwrap_or(0.0);
        let text_true: Vec<f64> = test.iter().map(prior).collect();
        let text_far: Vec<f64> = (0..test.len())
            .map(|i| prior(mismatch(setup.task, &test, i)))
            .collect();
        let area: Vec<f64> = true_pairs
            .iter()
            .map(|p| f64::from((p.roi[2] - p.roi[0]) * (p.roi[3] - p.roi[1])))
            .collect();
        Outcome {
            mean_iou: mean(&ious),
            iou_at_half: ious.iter().filter(|&&v| v >= 0.5).count() as f64 / ious.len() as f64,
            mean_box_iou: mean(&baseline),
            auc: auc(&probs(true_pairs), &probs(swapped)),
            far_auc: auc(&probs(true_pairs), &probs(far)),
            text_only_auc: auc(&text_true, &text_far),
            image_only_auc: auc(&area, &area),
            match_means: [mean(&probs(true_pairs)), mean(&probs(swapped))],
            match_std: {
                let all = probs(&predictions);
                let m = mean(&all);
                mean(&all.iter().map(|p| (p - m).powi(2)).collect::<Vec<_>>()).sqrt()
            },
            first_loss: losses.first().copied().unwrap_or_default(),
            last_loss: losses.last().copied().unwrap_or_default(),
            steps: losses.len(),
            seconds,
        }
    }
}

/// A clear mismatch for `examples[i]`: the first example after it whose text names another
/// kind (kind task), or a place not beside its place (place task: a diagonal neighbour or two
/// rows or columns away, so both box centres differ by at least a third of the image in some
/// direction and the text names at least one wrong side; a swapped text of the next place is
/// harder).
pub fn mismatch(task: SyntheticTask, examples: &[Example], i: usize) -> &Example {
    let others = (1..examples.len()).map(|k| &examples[(i + k) % examples.len()]);
    let found = match task {
        SyntheticTask::Place => {
            let place = |e: &Example| place_of(&e.answer).expect("a synthetic diagnosis");
            let (r, c) = place(&examples[i]);
            others.clone().find(|o| {
                let (r2, c2) = place(o);
                r.abs_diff(r2) + c.abs_diff(c2) >= 2
            })
        }
        SyntheticTask::Kind => {
            let kind = |e: &Example| kind_of(&e.answer).expect("a synthetic diagnosis");
            let k = kind(&examples[i]);
            others.clone().find(|o| kind(o) != k)
        }
    };
    found.expect("the set holds a mismatch for every example")
}

/// A text-only scorer: how often a text is the true diagnosis of a training image (its share
/// of the training records). It knows which diagnoses are common, nothing of the image.
fn text_prior(train: &[Example]) -> std::collections::HashMap<String, f64> {
    let mut counts = std::collections::HashMap::new();
    for e in train {
        *counts.entry(e.answer.clone()).or_insert(0.0) += 1.0 / train.len() as f64;
    }
    counts
}

fn auc(positives: &[f64], negatives: &[f64]) -> f64 {
    let scores = [positives, negatives].concat();
    let labels: Vec<bool> = (0..scores.len()).map(|i| i < positives.len()).collect();
    roc_auc(&scores, &labels).expect("both classes are present")
}

/// The settings of the learning proof: the defaults a user gets, with only the step count and
/// the batch given (8 samples a step, no accumulation).
pub fn proof_config(steps: usize) -> TrainConfig {
    TrainConfig {
        max_steps: steps,
        batch_size: 8,
        grad_accum: 1,
        ..TrainConfig::default()
    }
}
