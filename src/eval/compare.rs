//! Runs side by side (`roiscope compare`): every checkpoint of every run evaluated on one split
//! as `roiscope eval` does, as a table of validation metrics against the samples each run had
//! seen, and a plot of the curves. It answers the ablation's question: does a setting (the ROI
//! head, the match head with negatives, learned task weights) learn faster, with fewer samples?

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use serde::Serialize;

use super::{run_cases, summarise};
use crate::infer::Pipeline;
use crate::train::data::Example;
use crate::train::trainer::{checkpoint_config, checkpoint_step};

/// One checkpoint's validation metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub run: String,
    pub step: usize,
    /// Training samples seen: steps times the samples of a step (batch times accumulation).
    pub samples: usize,
    pub mean_iou: Option<f64>,
    pub match_auc: Option<f64>,
    pub rouge_l: Option<f64>,
    pub exact_match: Option<f64>,
}

/// The metrics [`Point`] holds, by column name, with how to read each off a point.
pub const METRICS: [(&str, fn(&Point) -> Option<f64>); 4] = [
    ("mean IoU", |p| p.mean_iou),
    ("match AUC", |p| p.match_auc),
    ("ROUGE-L", |p| p.rouge_l),
    ("exact match", |p| p.exact_match),
];

/// A run's `checkpoint-<step>` folders, by step.
pub fn checkpoints(run: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(run).with_context(|| format!("cannot read {}", run.display()))? {
        let path = entry?.path();
        if let Some(step) = checkpoint_step(&path) {
            found.push((step, path));
        }
    }
    found.sort();
    ensure!(
        !found.is_empty(),
        "{} has no checkpoint-<step> folder: train with checkpoint_every set to compare runs",
        run.display()
    );
    Ok(found)
}

/// Evaluates `checkpoint` (of run `name`) on `examples`, generating at most `max_new_tokens`.
pub fn evaluate(
    model: &Path,
    name: &str,
    checkpoint: &Path,
    examples: &[Example],
    max_new_tokens: usize,
    device: &candle_core::Device,
) -> anyhow::Result<Point> {
    let step = checkpoint_step(checkpoint).unwrap_or(0);
    let config = checkpoint_config(checkpoint)?;
    let mut pipeline = Pipeline::open(
        model,
        checkpoint,
        Some(0.5),
        candle_core::DType::F32,
        device,
    )?;
    pipeline.max_new_tokens = max_new_tokens;
    let mut cases = run_cases(&pipeline, examples, |_, _| {});
    let failed: Vec<String> = cases.iter().filter_map(|c| c.error.clone()).collect();
    ensure!(
        failed.is_empty(),
        "{}: {} records failed, the first: {}",
        checkpoint.display(),
        failed.len(),
        failed[0]
    );
    let summary = summarise(&mut cases, 0.5, 0.0);
    Ok(Point {
        run: name.to_string(),
        step,
        samples: step * config.batch_size * config.grad_accum,
        mean_iou: summary.roi.mean_iou,
        match_auc: summary.matching.auc,
        rouge_l: summary.text.rouge_l,
        exact_match: summary.text.exact_match,
    })
}

/// The table: one row per checkpoint, runs in the given order, steps ascending.
pub fn table(points: &[Point]) -> String {
    let width = points.iter().map(|p| p.run.len()).max().unwrap_or(3).max(3);
    let mut out = format!("{:<width$}  {:>6}  {:>8}", "run", "step", "samples");
    for (name, _) in METRICS {
        let _ = write!(out, "  {name:>11}");
    }
    out.push('\n');
    for p in points {
        let _ = write!(out, "{:<width$}  {:>6}  {:>8}", p.run, p.step, p.samples);
        for (_, get) in METRICS {
            match get(p) {
                Some(v) => {
                    let _ = write!(out, "  {v:>11.3}");
                }
                None => {
                    let _ = write!(out, "  {:>11}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Colours of the runs' curves, in order (then repeated).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// An SVG with one panel per metric: each run's curve of the metric against samples seen.
pub fn plot(points: &[Point]) -> String {
    let (panel_w, panel_h, margin) = (320.0, 220.0, 48.0);
    let runs: Vec<&str> = {
        let mut r: Vec<&str> = Vec::new();
        for p in points {
            if !r.contains(&p.run.as_str()) {
                r.push(&p.run);
            }
        }
        r
    };
    let max_samples = points.iter().map(|p| p.samples).max().unwrap_or(1).max(1) as f64;
    let width = METRICS.len() as f64 * (panel_w + margin) + margin;
    let height = panel_h + 2.0 * margin + 18.0 * runs.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n"
    );
    for (k, (name, get)) in METRICS.iter().enumerate() {
        let x0 = margin + k as f64 * (panel_w + margin);
        let y0 = margin;
        let _ = writeln!(
            svg,
            "<rect x=\"{x0}\" y=\"{y0}\" width=\"{panel_w}\" height=\"{panel_h}\" fill=\"none\" \
             stroke=\"#888\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{name}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">samples seen (0 to {max_samples:.0})\
             </text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">1</text>\n<text x=\"{}\" \
             y=\"{}\" text-anchor=\"end\">0</text>",
            x0 + panel_w / 2.0,
            y0 - 8.0,
            x0 + panel_w / 2.0,
            y0 + panel_h + 16.0,
            x0 - 4.0,
            y0 + 4.0,
            x0 - 4.0,
            y0 + panel_h,
        );
        for (r, run) in runs.iter().enumerate() {
            let line: Vec<String> = points
                .iter()
                .filter(|p| p.run == *run)
                .filter_map(|p| {
                    get(p).map(|v| {
                        format!(
                            "{:.1},{:.1}",
                            x0 + p.samples as f64 / max_samples * panel_w,
                            y0 + (1.0 - v.clamp(0.0, 1.0)) * panel_h
                        )
                    })
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                line.join(" "),
                COLOURS[r % COLOURS.len()]
            );
        }
    }
    for (r, run) in runs.iter().enumerate() {
        let y = margin + panel_h + 36.0 + 18.0 * r as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{margin}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" \
             stroke-width=\"3\"/>\n<text x=\"{}\" y=\"{}\">{}</text>",
            margin + 24.0,
            COLOURS[r % COLOURS.len()],
            margin + 30.0,
            y + 4.0,
            escape(run)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(run: &str, step: usize, iou: f64, auc: Option<f64>) -> Point {
        Point {
            run: run.into(),
            step,
            samples: step * 8,
            mean_iou: Some(iou),
            match_auc: auc,
            rouge_l: Some(0.25),
            exact_match: Some(0.0),
        }
    }

    /// The table has a row per checkpoint with its samples and metrics ("-" where the run has
    /// no value); the plot a curve per run and metric.
    #[test]
    fn table_and_plot_show_every_run() {
        let points = [
            point("sft", 50, 0.1, None),
            point("sft", 100, 0.12, None),
            point("multitask", 50, 0.3, Some(0.7)),
            point("multitask", 100, 0.55, Some(0.92)),
        ];
        let t = table(&points);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].contains("samples") && lines[0].contains("match AUC"));
        assert!(lines[2].starts_with("sft") && lines[2].contains("800"));
        assert!(lines[2].contains(" - ") || lines[2].contains("  -"), "{t}");
        assert!(
            lines[4].contains("0.550") && lines[4].contains("0.920"),
            "{t}"
        );
        let svg = plot(&points);
        assert_eq!(svg.matches("<polyline").count(), 2 * METRICS.len());
        assert!(svg.contains(">multitask</text>") && svg.contains(">sft</text>"));
    }
}
