//! `roiscope synthetic`: writes the synthetic lesion data set (see `data::synthetic`).

use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::data::synthetic::{write_set, SyntheticConfig, SyntheticTask};

pub const LONG_ABOUT: &str = "Write a synthetic, learnable ROI data set (no green marks; each \
    box is known exactly). Two tasks:\n  --task place: grey images with one bright lesion-like blob \
    and a diagnosis that names where it lies (upper/middle/lower, left/central/right);\n  \
    --task kind: one finding of four kinds that look different (nodule, cyst, mass, \
    calcification), at a random place and size over a chest, head or abdomen-like background, \
    and a diagnosis that names the kind in one of several wordings and never the place.\n\
    Images go to OUT/images/, records in the seed's format (with roi_coords) to \
    OUT/raw_data.json; then run\n  roiscope prepare --input OUT/raw_data.json --images OUT \
    --project PROJECT\nIt is the trainer's learning proof and a demo that needs no download.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to write (images/ and raw_data.json)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of images
    #[arg(long, value_name = "N", default_value_t = SyntheticConfig::default().count)]
    count: usize,
    /// Width and height of each image in pixels
    #[arg(long, value_name = "PX", default_value_t = SyntheticConfig::default().size)]
    size: u32,
    /// Random seed
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// What the diagnosis texts name: where the finding lies, or what kind it is
    #[arg(long, value_enum, default_value_t = SyntheticTask::Place)]
    task: SyntheticTask,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::with_draw_target(Some(args.count as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("writing [{bar:30}] {pos}/{len} images")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let config = SyntheticConfig {
        count: args.count,
        size: args.size,
        seed: args.seed,
        task: args.task,
    };
    write_set(&args.out, config, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} images and {}",
        args.count,
        args.out.join("raw_data.json").display()
    );
    Ok(ExitCode::SUCCESS)
}
