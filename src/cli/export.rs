//! `roiscope export`: the project as seed JSON, LLaMA-Factory JSON, JSON lines or COCO.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::export::{export, AnswerText, ExportFormat, ExportOptions, ImageChoice};
use crate::data::store::{Project, Split};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Project folder
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
    /// seed-json: the seed's format (roi_coords from the corrected box, else the detected one;
    /// target_diag); llamafactory: LLaMA-Factory's sharegpt layout with string contents and a
    /// dataset_info.json entry beside the file; jsonl: everything, re-importable with
    /// `prepare`; coco: detection JSON
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Only this split
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Output file (`-` for standard output); written atomically
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// seed-json, llamafactory: write image paths relative to this folder (give the same folder
    /// to the tool: LLaMA-Factory's `media_dir`). Default: the data root for seed-json, the
    /// export's folder for llamafactory (LLaMA-Factory's default media_dir)
    #[arg(long, value_name = "DIR")]
    media_dir: Option<PathBuf>,
    /// seed-json, llamafactory: the input images (DICOM rendered to PNG beside the export, in
    /// `<stem>-media/`) or the project's marker-free copies (the green outline removed)
    #[arg(long, value_enum, default_value_t = ImageChoice::Original)]
    images: ImageChoice,
    /// llamafactory: the assistant's answer, the diagnosis or the structured fields as JSON text
    #[arg(long, value_enum, default_value_t = AnswerText::Diagnosis)]
    answer: AnswerText,
    /// llamafactory: the dataset's name in dataset_info.json (default: the file's stem)
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let project = Project::open(&args.project)?;
    let opts = ExportOptions {
        split: args.split,
        media_dir: args.media_dir,
        images: args.images,
        answer: args.answer,
        name: args.name,
    };
    let summary = export(&project, args.format, &opts, &args.out)?;
    for line in summary.lines(&args.out) {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
