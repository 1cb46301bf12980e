//! `roiscope infer --adapter`: locate -> diagnose -> verify over many images.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::{parse_device, Args};
use crate::data::image_io::{self, LoadOptions};
use crate::infer::{overlay, Outcome, Pipeline, ThresholdSource, DEFAULT_QUESTION};

/// A progress bar over `len` images on stderr.
pub fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/black} {pos}/{len} images  ETA {eta}  {msg}")
            .expect("valid template"),
    );
    bar
}

/// `<stem>.overlay.png`, with a counter when two inputs share a stem.
fn overlay_name(image: &Path, taken: &mut HashSet<String>) -> String {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let mut name = format!("{stem}.overlay.png");
    let mut k = 2;
    while !taken.insert(name.clone()) {
        name = format!("{stem}-{k}.overlay.png");
        k += 1;
    }
    name
}

fn result_json(path: &Path, o: &Outcome, overlay: Option<&Path>) -> serde_json::Value {
    json!({
        "image": path.display().to_string(),
        "width": o.width,
        "height": o.height,
        "roi": o.roi,
        "box_px": o.box_px,
        "match_score": o.match_score,
        "threshold": o.threshold,
        "verdict": o.verdict(),
        "diagnosis": o.released(),
        "generated": o.generated,
        "generated_tokens": o.generated_tokens,
        "verify_tokens": o.verify_tokens,
        "timings": o.timings,
        "overlay": overlay.map(|p| p.display().to_string()),
        "error": null,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let adapter = args.adapter.clone().expect("called with --adapter");
    anyhow::ensure!(
        !args.image.is_empty(),
        "--adapter needs at least one --image"
    );
    anyhow::ensure!(
        args.temperature.is_none(),
        "the pipeline diagnoses greedily; --temperature is for plain generation"
    );
    let device = parse_device(&args.device)?;
    let started = Instant::now();
    let mut pipeline = Pipeline::open_in(
        &args.model,
        &adapter,
        args.threshold,
        args.format(),
        &device,
    )?;
    pipeline.max_new_tokens = args.max_new_tokens;
    let load_seconds = started.elapsed().as_secs_f64();
    let source = match &pipeline.threshold_source {
        ThresholdSource::Given => "--threshold".to_string(),
        ThresholdSource::Calibrated { file, .. } => file.display().to_string(),
        ThresholdSource::Default => "default, no calibration".to_string(),
    };
    eprintln!(
        "checkpoint {} ({:?} heads), threshold {:.3} ({source}); loaded in {load_seconds:.2} s ({})",
        pipeline.checkpoint.dir.display(),
        pipeline.heads.layout,
        pipeline.threshold,
        pipeline.weights.summary()
    );
    if let Some(dir) = &args.overlay {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let question = args
        .prompt
        .clone()
        .unwrap_or_else(|| DEFAULT_QUESTION.into());
    let bar = progress_bar(args.image.len());
    let mut stdout = std::io::stdout().lock();
    let mut taken = HashSet::new();
    let (mut failed, mut withheld) = (0usize, 0usize);
    let all = Instant::now();
    for path in &args.image {
        let result = (|| -> anyhow::Result<(Outcome, Option<PathBuf>)> {
            let img = image_io::load_rgb8(path, LoadOptions::default())
                .map_err(|e| anyhow::anyhow!("cannot read image {}: {e}", path.display()))?;
            let outcome = pipeline.run(&img, &question)?;
            let written = match &args.overlay {
                Some(dir) => {
                    let file = dir.join(overlay_name(path, &mut taken));
                    overlay::render(&img, outcome.box_px, &outcome.caption(), outcome.verified)
                        .save(&file)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    Some(file)
                }
                None => None,
            };
            Ok((outcome, written))
        })();
        bar.suspend(|| -> anyhow::Result<()> {
            match &result {
                Ok((o, file)) => {
                    withheld += usize::from(!o.verified);
                    if args.json {
                        writeln!(stdout, "{}", result_json(path, o, file.as_deref()))?;
                    } else {
                        let [x, y, w, h] = o.box_px;
                        writeln!(
                            stdout,
                            "{}: box {x},{y} {w}x{h} px; match {:.3} -> {}",
                            path.display(),
                            o.match_score,
                            o.verdict()
                        )?;
                        match o.released() {
                            Some(text) => writeln!(stdout, "  diagnosis: {text}")?,
                            None => writeln!(
                                stdout,
                                "  diagnosis withheld (unverified, {:.3} < {:.3}): {}",
                                o.match_score, o.threshold, o.generated
                            )?,
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    if args.json {
                        let line =
                            json!({"image": path.display().to_string(), "error": format!("{e:#}")});
                        writeln!(stdout, "{line}")?;
                    } else {
                        writeln!(stdout, "{}: error: {e:#}", path.display())?;
                    }
                }
            }
            Ok(())
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = args.image.len();
    let seconds = all.elapsed().as_secs_f64();
    eprintln!(
        "{n} images in {seconds:.2} s ({:.2} images/s): {} verified, {withheld} withheld, {failed} errors",
        n as f64 / seconds.max(1e-9),
        n - withheld - failed
    );
    Ok(ExitCode::SUCCESS)
}
