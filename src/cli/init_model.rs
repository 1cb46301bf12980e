//! `roiscope init-model`: a model folder of the real Qwen3-VL architecture with random weights.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::DType;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model::folder::{init_model, InitSize};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size: tiny (tests), small (training demos) or 2b (the Qwen3-VL-2B architecture)
    #[arg(long, value_enum)]
    config: InitSize,
    /// Folder to create (must not exist, or be empty)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Store the weights as bf16 (half the size)
    #[arg(long)]
    bf16: bool,
    /// Random seed of the weights
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("initialising");
    let dtype = if args.bf16 { DType::BF16 } else { DType::F32 };
    let config = init_model(args.config, &args.out, dtype, args.seed, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({} parameters, random weights, {})",
        args.out.display(),
        config.parameter_count(),
        if args.bf16 { "bf16" } else { "f32" }
    );
    Ok(ExitCode::SUCCESS)
}
