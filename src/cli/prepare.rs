//! `roiscope prepare`: import seed-format records into a project, detecting ROIs and removing
//! the drawn markers.

use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::data::image_io::DEFAULT_MAX_PIXELS;
use crate::data::prepare::{prepare, PrepareOptions, PrepareReport};
use crate::data::record::DEFAULT_DIAGNOSIS_FIELD;
use crate::data::store::SplitRatios;

pub const LONG_ABOUT: &str = "Import seed-format records into a project.\n\n\
    Reads a JSON array of records (the seed's raw_data.json) or JSON lines (as `export --format \
    jsonl` writes), finds the green ROI box in every image in parallel, writes a marker-free copy \
    of each boxed image into the project's cache for training, assigns deterministic train/val/test \
    splits stratified by modality and organ, and ends with a report of kept and skipped records \
    grouped by reason (also written to PROJECT/prepare-report.json and kept in the project).\n\n\
    Running it again resumes: records already in the project are not redone and nothing is \
    duplicated; those whose `roi_coords` or `target_diag` in the input differ from the project's \
    are listed in the report, and `--apply-changes` applies them as edits (in the edit history, \
    undoable). A record given with `roi_coords` keeps that box as a corrected box where it \
    differs from the detected one. The input may start with a UTF-8 byte order mark; UTF-16 and \
    NaN/Infinity (not JSON) are refused with the way to fix them.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Records: a JSON array (seed format) or JSON lines
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The data root that record image paths are relative to
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Project folder (created if missing)
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
    /// Structured field that holds the diagnosis target
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DIAGNOSIS_FIELD)]
    diagnosis_field: String,
    /// Worker threads [default: all cores]
    #[arg(long, short = 'j', value_name = "N")]
    threads: Option<usize>,
    /// Skip records whose image has no green box, as the seed did [default: keep them,
    /// marked needs-fix, so a box can be drawn]
    #[arg(long)]
    skip_unboxed: bool,
    /// Shares of train,val,test for records not yet in a split
    #[arg(long, value_name = "T,V,T", default_value = "80,10,10")]
    split: SplitRatios,
    /// Refuse images with more pixels than this, before decoding them
    #[arg(long, value_name = "PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Records already in the project whose roi_coords or target_diag differ in the input:
    /// apply them as edits (corrected box, diagnosis) [default: only report them]
    #[arg(long)]
    apply_changes: bool,
    /// Refuse images whose real location is outside the data root [default: follow symbolic
    /// links inside the data root wherever they point; paths in records may still not leave it
    /// with `..` or an absolute path]
    #[arg(long)]
    stay_in_root: bool,
    /// No progress bar
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print the report as JSON on stdout instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        eprintln!("roiscope prepare: --threads must be at least 1");
        return Ok(ExitCode::from(2));
    }
    let opts = PrepareOptions {
        input: args.input,
        images: args.images,
        project: args.project,
        diagnosis_field: args.diagnosis_field,
        threads,
        skip_unboxed: args.skip_unboxed,
        ratios: args.split,
        max_pixels: args.max_pixels,
        apply_changes: args.apply_changes,
        stay_in_root: args.stay_in_root,
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40.green/black} {pos}/{len} records  {per_sec}  ETA {eta}  {msg}",
            )
            .expect("valid template"),
        );
        bar
    };
    let report = prepare(&opts, &mut |p| {
        if bar.length() != Some(p.total as u64) {
            bar.set_length(p.total as u64);
        }
        bar.set_position(p.done as u64);
        bar.set_message(format!("kept {}  skipped {}", p.kept, p.skipped));
    });
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a person reads it.
pub fn render(r: &PrepareReport) -> String {
    let mut s = format!(
        "Prepared {} into {} in {:.1} s\n  records in input   {:>8}\n  kept (new)         {:>8}\n",
        r.input, r.project, r.seconds, r.records_in_input, r.kept
    );
    if r.kept_without_box > 0 {
        s += &format!(
            "    of which no box  {:>8}  (kept as needs-fix; --skip-unboxed drops them)\n",
            r.kept_without_box
        );
    }
    s += &format!(
        "  already in project {:>8}\n  skipped            {:>8}\n",
        r.already_in_project, r.skipped
    );
    if r.changed > 0 {
        s += &format!(
            "    of which changed {:>8}  (roi_coords or target_diag differ from the project's; {})\n",
            r.changed,
            if r.changes_applied == r.changed {
                "applied as edits".to_string()
            } else {
                "not applied: run again with --apply-changes to apply them as edits".to_string()
            }
        );
        for e in &r.changed_examples {
            s += &format!(
                "      record {} (project id {}, {}): {}\n",
                e.record, e.id, e.image, e.detail
            );
        }
    }
    for g in &r.skipped_by_reason {
        s += &format!("    {:<28} {:>6}\n", g.reason, g.count);
        for e in &g.examples {
            s += &format!(
                "      record {} ({}): {}\n",
                e.record,
                e.image.as_deref().unwrap_or("no image"),
                e.detail
            );
        }
        if g.count > g.examples.len() {
            s += &format!(
                "      ... {} more (all in the project: `roiscope project info`)\n",
                g.count - g.examples.len()
            );
        }
    }
    if r.splits_assigned > 0 {
        s += &format!("  splits assigned    {:>8}\n", r.splits_assigned);
    }
    s
}
