//! A run's curves by optimiser step: filled from its events as they stream, or read back from
//! its `metrics.jsonl`.

use std::path::Path;

use crate::train::metrics::read_metrics;
use crate::train::trainer::Event;

/// Every curve of a run, by optimiser step.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    pub steps: Vec<f64>,
    pub loss: [Vec<f64>; 3],
    pub weighted: [Vec<f64>; 3],
    pub total: Vec<f64>,
    pub precision: [Vec<f64>; 3],
    pub lr_lora: Vec<f64>,
    pub lr_heads: Vec<f64>,
    pub total_steps: usize,
    pub eta_seconds: f64,
    pub samples_per_second: f64,
    /// Lines of the metrics file these were read from that could not be read.
    pub unreadable_lines: usize,
    /// Validations on the val split: their steps, raw loss per task, ROI mean IoU and match
    /// AUC (NaN where there was none).
    pub val: ValCurves,
}

/// The validation curves of a run.
#[derive(Debug, Clone, Default)]
pub struct ValCurves {
    pub steps: Vec<f64>,
    pub loss: [Vec<f64>; 3],
    pub roi_iou: Vec<f64>,
    pub match_auc: Vec<f64>,
}

impl ValCurves {
    fn truncate(&mut self, n: usize) {
        self.steps.truncate(n);
        for v in self
            .loss
            .iter_mut()
            .chain([&mut self.roi_iou, &mut self.match_auc])
        {
            v.truncate(n);
        }
    }
}

impl Curves {
    pub fn push(&mut self, e: &Event) {
        if let Event::Step {
            step,
            total_steps,
            loss,
            weighted,
            precision,
            total,
            lr_lora,
            lr_heads,
            samples_per_second,
            eta_seconds,
            ..
        } = e
        {
            let x = *step as f64;
            if self.steps.last().is_some_and(|&last| x <= last) {
                // A resumed run repeats the steps after its checkpoint (a run killed after its
                // last checkpoint logged more): the new ones replace the old from here on.
                self.truncate(self.steps.partition_point(|&s| s < x));
            }
            self.steps.push(x);
            for i in 0..3 {
                self.loss[i].push(loss[i]);
                self.weighted[i].push(weighted[i]);
                self.precision[i].push(precision[i]);
            }
            self.total.push(*total);
            self.lr_lora.push(*lr_lora);
            self.lr_heads.push(*lr_heads);
            self.total_steps = *total_steps;
            self.eta_seconds = *eta_seconds;
            self.samples_per_second = *samples_per_second;
        }
        if let Event::Validation {
            step,
            loss,
            roi_iou,
            match_auc,
            ..
        } = e
        {
            let x = *step as f64;
            let v = &mut self.val;
            v.truncate(v.steps.partition_point(|&s| s < x));
            v.steps.push(x);
            for (curve, l) in v.loss.iter_mut().zip(loss) {
                curve.push(*l);
            }
            v.roi_iou.push(roi_iou.unwrap_or(f64::NAN));
            v.match_auc.push(match_auc.unwrap_or(f64::NAN));
        }
    }

    /// Reads the step events of a `metrics.jsonl` back as events. Lines that cannot be read (a
    /// line cut short by a crash) are counted, not guessed at.
    pub fn from_metrics(path: &Path) -> anyhow::Result<Curves> {
        let (lines, unreadable) = read_metrics(path)?;
        let mut curves = Curves::default();
        for line in &lines {
            curves.push(&line.event);
        }
        curves.unreadable_lines = unreadable.len();
        Ok(curves)
    }

    /// Keeps the points up to and including `step` (where a continued run picks up).
    pub fn keep_until(&mut self, step: usize) {
        self.truncate(self.steps.partition_point(|&s| s <= step as f64));
        let v = &mut self.val;
        v.truncate(v.steps.partition_point(|&s| s <= step as f64));
    }

    fn truncate(&mut self, n: usize) {
        self.steps.truncate(n);
        for v in self
            .loss
            .iter_mut()
            .chain(&mut self.weighted)
            .chain(&mut self.precision)
            .chain([&mut self.total, &mut self.lr_lora, &mut self.lr_heads])
        {
            v.truncate(n);
        }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// `(x, y)` pairs with an exponential moving average of `y` (`alpha` 0: raw).
pub fn smooth(x: &[f64], y: &[f64], alpha: f64) -> Vec<[f64; 2]> {
    let mut acc: Option<f64> = None;
    x.iter()
        .zip(y)
        .filter(|(_, v)| v.is_finite())
        .map(|(x, &v)| {
            let s = match acc {
                Some(a) => alpha * a + (1.0 - alpha) * v,
                None => v,
            };
            acc = Some(s);
            [*x, s]
        })
        .collect()
}
