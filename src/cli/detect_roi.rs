//! `roiscope detect-roi`: green-ROI detection over files and folders.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::data::files::{expand_inputs, save_png_atomic, InputFile};
use crate::data::image_io::{load_rgb8, recycle, JpegDecoder, LoadOptions, DEFAULT_MAX_PIXELS};
use crate::data::marker::remove_outlines;
use crate::data::roi::{detect, DetectMode, Detection};
use crate::parallel::ordered_map;

/// The long help of `detect-roi` (clap takes it from the subcommand variant in `cli/mod.rs`).
pub const LONG_ABOUT: &str = "Find the green ROI boxes drawn into images.\n\n\
    Prints one JSON line per image, in input order:\n  \
    {\"image\": PATH, \"width\": W, \"height\": H, \"roi\": [x1,y1,x2,y2] | null,\n   \
    \"rois\": [{\"box\": [x1,y1,x2,y2], \"box_px\": [x,y,w,h], \"confidence\": c}], \"error\": null | MESSAGE}\n\
    `roi` is the largest box, normalised to [0,1] by image width and height; `rois` lists every \
    box found, largest first. A file that cannot be read gets an `error` line and the run goes \
    on; the exit code is non-zero only for usage errors. With --clean, each line also names the \
    cleaned copy in \"clean\".";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files (JPEG, PNG, BMP, TIFF) or folders, searched recursively
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// `robust` finds outlines of any width and answers null rather than guess; `seed`
    /// reproduces the original OpenCV procedure exactly (confidence is then null)
    #[arg(long, value_enum, default_value_t = DetectMode::Robust)]
    mode: DetectMode,

    /// Worker threads [default: all cores]
    #[arg(long, short = 'j', value_name = "N")]
    threads: Option<usize>,

    /// Also write each image with the drawn outline removed, as PNG, mirroring the input
    /// layout under OUT_DIR (robust mode only)
    #[arg(long, value_name = "OUT_DIR")]
    clean: Option<PathBuf>,

    /// Refuse images with more pixels than this, before decoding them
    #[arg(long, value_name = "PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    /// No progress bar
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Serialize)]
struct RoiJson {
    #[serde(rename = "box")]
    normalised: [f64; 4],
    box_px: [u32; 4],
    confidence: Option<f32>,
}

#[derive(Serialize)]
struct Line {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    roi: Option<[f64; 4]>,
    rois: Vec<RoiJson>,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clean: Option<String>,
}

impl Line {
    fn failed(image: String, error: String) -> Line {
        Line {
            image,
            width: None,
            height: None,
            roi: None,
            rois: Vec::new(),
            error: Some(error),
            clean: None,
        }
    }

    fn from_detection(image: String, d: &Detection) -> Line {
        let rois: Vec<RoiJson> = d
            .rois
            .iter()
            .map(|r| RoiJson {
                normalised: r.bbox.normalised(d.width, d.height),
                box_px: [r.bbox.x0, r.bbox.y0, r.bbox.width(), r.bbox.height()],
                confidence: r.confidence.map(|c| (c * 1000.0).round() / 1000.0),
            })
            .collect();
        Line {
            image,
            width: Some(d.width),
            height: Some(d.height),
            roi: rois.first().map(|r| r.normalised),
            rois,
            error: None,
            clean: None,
        }
    }
}

struct Job {
    input: Result<InputFile, String>,
    shown: String,
    /// Where the cleaned copy goes, or why it cannot (another input already writes there).
    clean_to: Option<Result<PathBuf, String>>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return usage_error("--threads must be at least 1");
    }
    if args.clean.is_some() && args.mode == DetectMode::Seed {
        return usage_error("--clean needs the outline geometry of --mode robust");
    }
    if let Some(dir) = &args.clean {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --clean folder {}", dir.display()))?;
    }
    let jobs = plan_jobs(&args);
    if jobs.is_empty() {
        eprintln!("detect-roi: no images found under the given paths");
        return Ok(ExitCode::SUCCESS);
    }
    let progress = progress_bar(jobs.len() as u64, args.quiet);
    let opts = LoadOptions {
        max_pixels: args.max_pixels,
        // Seed mode must see the very pixels OpenCV's imread sees.
        jpeg: match args.mode {
            DetectMode::Seed => JpegDecoder::Libjpeg,
            DetectMode::Robust => JpegDecoder::Fast,
        },
    };
    let started = Instant::now();
    let (mut with_box, mut without, mut errors) = (0usize, 0usize, 0usize);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error = None;
    ordered_map(
        jobs,
        threads,
        |job| process(&job, args.mode, opts),
        |_, line| {
            match (&line.error, line.roi) {
                (Some(_), _) => errors += 1,
                (None, Some(_)) => with_box += 1,
                (None, None) => without += 1,
            }
            if write_error.is_none() {
                let json = serde_json::to_string(&line).expect("plain data serialises");
                if let Err(e) = writeln!(out, "{json}") {
                    write_error = Some(e);
                }
            }
            progress.inc(1);
        },
    );
    progress.finish_and_clear();
    if let Some(e) = write_error.or_else(|| out.flush().err()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e).context("writing results to stdout");
    }
    let secs = started.elapsed().as_secs_f64();
    let total = with_box + without + errors;
    eprintln!(
        "detect-roi: {total} images: {with_box} with a box, {without} without, {errors} errors; \
         {secs:.2} s ({:.1} images/s, {threads} threads)",
        total as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

fn plan_jobs(args: &Args) -> Vec<Job> {
    let mut taken = HashSet::new();
    expand_inputs(&args.paths)
        .into_iter()
        .map(|entry| match entry {
            Err(e) => Job {
                shown: e.path.to_string_lossy().into_owned(),
                input: Err(e.message),
                clean_to: None,
            },
            Ok(input) => {
                let shown = input.path.to_string_lossy().into_owned();
                let clean_to = args.clean.as_ref().map(|dir| {
                    let mut target = dir.join(&input.relative);
                    target.set_extension("png");
                    if taken.insert(target.clone()) {
                        Ok(target)
                    } else {
                        Err(format!(
                            "cleaned copy not written: another input already writes {} \
                             (rename one of them)",
                            target.display()
                        ))
                    }
                });
                Job {
                    shown,
                    input: Ok(input),
                    clean_to,
                }
            }
        })
        .collect()
}

fn process(job: &Job, mode: DetectMode, opts: LoadOptions) -> Line {
    let input = match &job.input {
        Ok(i) => i,
        Err(message) => return Line::failed(job.shown.clone(), message.clone()),
    };
    let mut img = match load_rgb8(&input.path, opts) {
        Ok(img) => img,
        Err(e) => return Line::failed(job.shown.clone(), e.to_string()),
    };
    let detection = detect(&img, mode);
    let mut line = Line::from_detection(job.shown.clone(), &detection);
    match &job.clean_to {
        Some(Ok(target)) => {
            remove_outlines(&mut img, &detection.rois);
            match save_png_atomic(&img, target) {
                Ok(()) => line.clean = Some(target.to_string_lossy().into_owned()),
                Err(e) => line.error = Some(format!("cannot write cleaned image: {e:#}")),
            }
        }
        Some(Err(why)) => line.error = Some(why.clone()),
        None => {}
    }
    recycle(img);
    line
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.green/black} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

fn usage_error(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("roiscope detect-roi: {message}");
    Ok(ExitCode::from(2))
}
