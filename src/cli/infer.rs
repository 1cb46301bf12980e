//! `roiscope infer`: one answer from a model folder for an image and a prompt, or, with
//! `--adapter`, locate -> diagnose -> verify over many images (see [`crate::infer`]).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;

use crate::data::image_io::{self, LoadOptions};
use crate::model::generate::{generate, GenerationConfig, Sampling, StopReason};
use crate::model::quantized::{self, WeightFormat};
use crate::model::text::KvCache;

#[path = "infer_pipeline.rs"]
pub(super) mod pipeline;

pub const LONG_ABOUT: &str = "Generate the model's answer to a prompt about an image.\n\n\
    The model folder holds config.json, model.safetensors (or shards and \
    model.safetensors.index.json), tokenizer.json and preprocessor_config.json, as Hugging Face \
    saves Qwen3-VL (`roiscope init-model` writes one with random weights). The prompt is one user \
    turn: the image, then the text (or the image where the text says <image>). Tokens are printed \
    as they are generated; generation stops at <|im_end|>, at an eos token of \
    generation_config.json, or after --max-new-tokens.\n\n\
    With --adapter RUN_DIR|CHECKPOINT (a run folder means its latest checkpoint) the trained \
    pipeline runs on every --image: locate (the ROI head's box), diagnose (greedy generation), \
    verify (the match head on the image and the generated diagnosis, laid out as in training). \
    Below the threshold (--threshold, else the run's calibration.json from `roiscope eval \
    --calibrate`, else 0.5) the diagnosis is withheld and flagged unverified. One result per \
    image goes to stdout (a JSON line with --json), a progress bar to stderr; an image that \
    cannot be read gets an error entry and the batch goes on. --overlay OUT_DIR writes \
    <name>.overlay.png per image with the box, the score and the verdict.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Image (JPEG, PNG, BMP, TIFF or DICOM); leave out for a text-only prompt. With
    /// --adapter: one or more images
    #[arg(long, value_name = "FILE", num_args = 1..)]
    image: Vec<PathBuf>,
    /// The question (with --adapter the default is the sample data's question form)
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    /// A trained run folder (its latest checkpoint) or checkpoint folder: run locate ->
    /// diagnose -> verify
    #[arg(long, value_name = "RUN_DIR|CHECKPOINT")]
    adapter: Option<PathBuf>,
    /// With --adapter: write an overlay PNG per image into this folder
    #[arg(long, value_name = "OUT_DIR", requires = "adapter")]
    overlay: Option<PathBuf>,
    /// With --adapter: verify threshold on the match probability (default: the run's
    /// calibration, else 0.5)
    #[arg(long, value_name = "P", requires = "adapter")]
    threshold: Option<f64>,
    /// Most tokens to generate
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_new_tokens: usize,
    /// Sample with this temperature instead of taking the most likely token
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// With --temperature: sample from the smallest set of tokens holding this probability
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.9,
        requires = "temperature"
    )]
    top_p: f64,
    /// With --temperature: random seed
    #[arg(long, value_name = "N", default_value_t = 0, requires = "temperature")]
    seed: u64,
    /// How the weights are stored: f32; bf16 (linear layers in bf16, half the memory); q8_0 or
    /// q4k (the text model's linear layers and the LM head quantised, the vision tower in bf16;
    /// CPU only). Activations are f32 in every format; a LoRA adapter is merged before packing
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "f32")]
    weights: WeightFormat,
    /// The same as --weights bf16
    #[arg(long, conflicts_with = "weights")]
    bf16: bool,
    /// Device: cpu, or cuda / cuda:N in a build with the `cuda` feature
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
    /// Print one JSON object: text, token_ids, prompt_tokens, image_grid_thw, seconds
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.adapter.is_some() {
        return pipeline::run(args);
    }
    let Some(question) = args.prompt.clone() else {
        anyhow::bail!("--prompt is required without --adapter");
    };
    if args.image.len() > 1 {
        anyhow::bail!("plain generation takes one --image; --adapter runs the pipeline on many");
    }
    let device = parse_device(&args.device)?;
    let started = Instant::now();
    let (folder, report) =
        quantized::open_folder(&args.model, args.format(), &device, |_| Ok(()), |_, _| {})?;
    let load_seconds = started.elapsed().as_secs_f64();
    let image = match args.image.first() {
        Some(path) => Some(
            image_io::load_rgb8(path, LoadOptions::default())
                .with_context(|| format!("cannot read image {}", path.display()))?,
        ),
        None => None,
    };
    let prompt = folder.prompt(image.as_ref(), &question)?;
    let context = folder.config.text.max_position_embeddings;
    if prompt.input.seq_len() >= context {
        anyhow::bail!(
            "the prompt is {} tokens, the model's context is {context}",
            prompt.input.seq_len()
        );
    }
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: match args.temperature {
            None => Sampling::Greedy,
            Some(temperature) => Sampling::TopP {
                temperature,
                top_p: args.top_p,
                seed: args.seed,
            },
        },
        stop_tokens: folder.stop_tokens.clone(),
    };
    let started = Instant::now();
    let mut cache = KvCache::new();
    let mut stdout = std::io::stdout().lock();
    // Streamed text: decode the whole answer so far and print what is new, so multi-token
    // characters come out whole.
    let mut shown = String::new();
    let mut so_far: Vec<u32> = Vec::new();
    let special = folder.tokenizer.special();
    let generation = generate(&folder.model, &prompt.input, &config, &mut cache, |token| {
        if !args.json && !config.stop_tokens.contains(&token) && token != special.endoftext {
            so_far.push(token);
            if let Ok(text) = folder.tokenizer.decode(&so_far) {
                if text.starts_with(&shown) && !text.ends_with('\u{fffd}') {
                    let _ = write!(stdout, "{}", &text[shown.len()..]);
                    let _ = stdout.flush();
                    shown = text;
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let answer: Vec<u32> = generation
        .token_ids
        .iter()
        .copied()
        .filter(|t| !config.stop_tokens.contains(t))
        .collect();
    let text = folder.tokenizer.decode(&answer)?;
    if args.json {
        let grid = prompt.image.as_ref().map(|p| p.grid_thw.to_vec());
        let out = serde_json::json!({
            "text": text,
            "token_ids": generation.token_ids,
            "prompt_tokens": generation.prompt_tokens,
            "image_grid_thw": grid,
            "seconds": seconds,
            "prefill_seconds": generation.prefill_seconds,
            // Tokens after the first, per second of decoding.
            "decode_tokens_per_second": decode_rate(&generation),
            "load_seconds": load_seconds,
            "weights": report,
            "stop": format!("{:?}", generation.stop),
        });
        writeln!(stdout, "{out}")?;
    } else {
        if text.len() > shown.len() && text.starts_with(&shown) {
            write!(stdout, "{}", &text[shown.len()..])?;
        }
        writeln!(stdout)?;
        let reason = match generation.stop {
            StopReason::StopToken => "end of answer",
            StopReason::MaxNewTokens => "--max-new-tokens reached",
            StopReason::Cancelled => "cancelled",
            StopReason::ContextFull => "context full",
        };
        eprintln!(
            "{} prompt tokens, {} new ({reason}) in {seconds:.2} s; model loaded in {load_seconds:.2} s ({})",
            generation.prompt_tokens,
            generation.token_ids.len(),
            report.summary()
        );
    }
    Ok(ExitCode::SUCCESS)
}

impl Args {
    /// `--weights`, or bf16 with `--bf16`.
    pub(super) fn format(&self) -> WeightFormat {
        if self.bf16 {
            WeightFormat::Bf16
        } else {
            self.weights
        }
    }
}

fn decode_rate(g: &crate::model::generate::Generation) -> Option<f64> {
    let n = g.token_ids.len().saturating_sub(1);
    (n > 0 && g.decode_seconds > 0.0).then(|| n as f64 / g.decode_seconds)
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => anyhow::bail!("unknown device {other:?} (cpu, cuda or cuda:N)"),
        },
    }
}

fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    if !cfg!(feature = "cuda") {
        anyhow::bail!("this roiscope was built without the `cuda` feature; use --device cpu");
    }
    Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}
