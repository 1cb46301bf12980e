//! `roiscope export`: the project as seed JSON, JSON lines or COCO.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::export::{export, ExportFormat};
use crate::data::store::{Project, Split};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Project folder
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
    /// seed-json: the seed's format (roi_coords from the corrected box, else the detected one;
    /// target_diag); jsonl: everything, re-importable with `prepare`; coco: detection JSON
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Only this split
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Output file (`-` for standard output); written atomically
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let project = Project::open(&args.project)?;
    let summary = export(&project, args.format, args.split, &args.out)?;
    let mut line = format!("exported {} records", summary.records);
    if summary.without_box > 0 {
        line += &format!(
            "; left out {} without a box (the seed's trainer needs roi_coords; \
             `--format jsonl` keeps them)",
            summary.without_box
        );
    }
    eprintln!("{line}");
    Ok(ExitCode::SUCCESS)
}
