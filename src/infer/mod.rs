//! locate -> diagnose -> verify (DESIGN 6) with a trained checkpoint.
//!
//! 1. locate: the ROI head on the image-token states of the prompt's prefill (in a causal model
//!    they do not depend on the answer, so they are the states the head saw in training);
//! 2. diagnose: greedy generation with the KV cache, continuing that same prefill;
//! 3. verify: the match head on (image, generated diagnosis) laid out exactly as a training
//!    sample (`tokenizer.chat` with the answer, `train::data::collate`, pooled over every real
//!    token); below the threshold the diagnosis is withheld and flagged "unverified". The states
//!    come from generation itself: the prompt's and those of the generated tokens fed back in;
//!    only the tokens of the pair that generation did not feed (normally `<|im_end|>` and the
//!    newline after it) go through the model, continuing its cache
//!    ([`Pipeline::score_pair`] runs the whole pair again and gives the same score).
//!
//! - [`heads`]: strict loading of the heads, roiscope's layout or the seed's;
//! - [`overlay`]: the overlay PNG and its bitmap font;
//! - [`preannotate`]: the pipeline over a project's records, stored with their run;
//! - [`verdict`]: the verdict with its reason.

pub mod heads;
pub mod overlay;
pub mod preannotate;
pub mod verdict;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::model::folder::ModelFolder;
use crate::model::generate::{generate_observed, GenerationConfig, Sampling};
use crate::model::ops::Exec;
use crate::model::processor::{self, ProcessedImage};
use crate::model::quantized::{self, PackReport, WeightFormat};
use crate::model::text::KvCache;
use crate::train::data::{self, Sample};
use crate::train::heads::{image_token_coords, run_heads};
use crate::train::lora;
use heads::Heads;

/// The threshold used when a run has no calibration.
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// The calibration file `roiscope eval --calibrate` writes into the run folder.
pub const CALIBRATION_FILE: &str = "calibration.json";
/// The question asked when none is given (the sample data's form).
pub const DEFAULT_QUESTION: &str = "<image>Describe the abnormality in this image.";

/// A checkpoint folder: `adapter/` (peft layout) and `heads.safetensors`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The run folder (the checkpoint's parent), where the calibration lives.
    pub run: PathBuf,
}

impl Checkpoint {
    /// `path` is a checkpoint folder, or a run folder meaning its latest checkpoint.
    pub fn resolve(path: &Path) -> anyhow::Result<Self> {
        ensure!(path.is_dir(), "adapter {} does not exist", path.display());
        let dir = if path.join("heads.safetensors").exists() || path.join("adapter").exists() {
            if crate::train::checkpoint::checkpoint_step(path).is_some() {
                crate::train::checkpoint::ensure_complete(path)?;
            }
            path.to_path_buf()
        } else {
            crate::train::trainer::latest_checkpoint(path).with_context(|| {
                format!(
                    "{} is neither a checkpoint (adapter/ + heads.safetensors) nor a run folder \
                     with checkpoint-<step>/ folders",
                    path.display()
                )
            })?
        };
        let mut missing = Vec::new();
        if !dir.join("adapter/adapter_config.json").is_file() {
            missing.push("adapter/adapter_config.json");
        }
        if !dir.join("adapter/adapter_model.safetensors").is_file() {
            missing.push("adapter/adapter_model.safetensors");
        }
        if !dir.join("heads.safetensors").is_file() {
            missing.push("heads.safetensors");
        }
        ensure!(
            missing.is_empty(),
            "checkpoint {} lacks {}",
            dir.display(),
            missing.join(", ")
        );
        let run = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Checkpoint { dir, run })
    }

    /// The checkpoint folder's name (`checkpoint-<step>`).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A calibrated verify threshold, as stored in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    pub threshold: f64,
    pub target_sensitivity: f64,
    /// Sensitivity and false-positive rate at the threshold on the calibration data.
    pub sensitivity: f64,
    pub false_positive_rate: Option<f64>,
    pub split: String,
    pub positives: usize,
    pub negatives: usize,
    /// The checkpoint the threshold was calibrated on.
    pub checkpoint: String,
}

/// Where the threshold in use came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum ThresholdSource {
    /// `--threshold`.
    Given,
    /// The run's calibration file.
    Calibrated { file: PathBuf, checkpoint: String },
    /// No calibration: [`DEFAULT_THRESHOLD`].
    Default,
}

/// Reads the run's calibration, if any.
pub fn read_calibration(ckpt: &Checkpoint) -> anyhow::Result<Option<(Calibration, PathBuf)>> {
    let file = ckpt.run.join(CALIBRATION_FILE);
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let cal: Calibration = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a roiscope calibration", file.display()))?;
    ensure!(
        (0.0..=1.0).contains(&cal.threshold),
        "{}: threshold {} is outside [0, 1]",
        file.display(),
        cal.threshold
    );
    Ok(Some((cal, file)))
}

/// Writes the calibration into the run folder (atomically).
pub fn write_calibration(ckpt: &Checkpoint, cal: &Calibration) -> anyhow::Result<PathBuf> {
    let file = ckpt.run.join(CALIBRATION_FILE);
    let tmp = ckpt.run.join(format!(".{CALIBRATION_FILE}.partial"));
    std::fs::write(&tmp, serde_json::to_string_pretty(cal)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// Seconds spent in each step of one image.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// Image resizing and patching.
    pub preprocess: f64,
    /// The prompt through the model (vision tower included).
    pub prefill: f64,
    /// The ROI head on the prefill states.
    pub locate: f64,
    /// Generating the tokens after the prompt.
    pub decode: f64,
    /// The tokens of the (image, diagnosis) pair that generation had not computed through the
    /// model, and the match head.
    pub verify: f64,
    pub total: f64,
}

/// What the pipeline says about one image.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `x1, y1, x2, y2`, normalised by the image's width and height.
    pub roi: [f32; 4],
    /// `x, y, width, height` in pixels of the input image.
    pub box_px: [u32; 4],
    pub width: u32,
    pub height: u32,
    /// The match head's probability for (image, generated diagnosis).
    pub match_score: f32,
    pub threshold: f64,
    pub verified: bool,
    /// The generated diagnosis, whether released or not.
    pub generated: String,
    pub generated_tokens: usize,
    /// Tokens run through the model for verify (the pair's tokens generation had not fed in).
    pub verify_tokens: usize,
    pub timings: Timings,
}

impl Outcome {
    pub fn verdict(&self) -> &'static str {
        if self.verified {
            "verified"
        } else {
            "unverified"
        }
    }

    /// The diagnosis a reader may see: `None` when withheld.
    pub fn released(&self) -> Option<&str> {
        self.verified.then_some(self.generated.as_str())
    }

    /// The overlay caption.
    pub fn caption(&self) -> String {
        format!(
            "ROI  MATCH {:.2}  {}",
            self.match_score,
            if self.verified {
                "VERIFIED"
            } else {
                "UNVERIFIED - WITHHELD"
            }
        )
    }
}

/// A normalised box in pixels (`x, y, width, height`), at least one pixel, inside the image.
pub fn box_to_px(roi: [f32; 4], width: u32, height: u32) -> [u32; 4] {
    let clamp = |v: f32, max: u32| ((v.clamp(0.0, 1.0) * max as f32).round() as u32).min(max);
    let x1 = clamp(roi[0], width).min(width.saturating_sub(1));
    let y1 = clamp(roi[1], height).min(height.saturating_sub(1));
    let x2 = clamp(roi[2], width).max(x1 + 1);
    let y2 = clamp(roi[3], height).max(y1 + 1);
    [x1, y1, x2 - x1, y2 - y1]
}

/// A model folder with a checkpoint's adapter attached and its heads.
pub struct Pipeline {
    pub folder: ModelFolder,
    pub heads: Heads,
    pub checkpoint: Checkpoint,
    pub threshold: f64,
    pub threshold_source: ThresholdSource,
    pub max_new_tokens: usize,
    /// How the weights were stored at load.
    pub weights: PackReport,
}

/// What the heads say about one (image, text) pair laid out as in training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairScore {
    pub roi: [f32; 4],
    pub match_score: f32,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Pipeline {
    /// Loads the model folder, attaches the checkpoint's adapter and loads its heads strictly.
    /// `threshold`: `Some` overrides the run's calibration. `dtype` bf16 means
    /// [`WeightFormat::Bf16`].
    pub fn open(
        model_dir: &Path,
        adapter: &Path,
        threshold: Option<f64>,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let format = if dtype == DType::BF16 {
            WeightFormat::Bf16
        } else {
            WeightFormat::F32
        };
        Self::open_in(model_dir, adapter, threshold, format, device)
    }

    /// [`Self::open`] with the weights in `format`; the adapter is merged into packed weights.
    pub fn open_in(
        model_dir: &Path,
        adapter: &Path,
        threshold: Option<f64>,
        format: WeightFormat,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let checkpoint = Checkpoint::resolve(adapter)?;
        if let Some(t) = threshold {
            ensure!(
                (0.0..=1.0).contains(&t),
                "--threshold {t} is outside [0, 1]"
            );
        }
        let (folder, weights) = quantized::open_folder(
            model_dir,
            format,
            device,
            |model| {
                lora::load_peft(model, &checkpoint.dir.join("adapter"), device)
                    .with_context(|| {
                        format!("cannot attach the adapter of {}", checkpoint.dir.display())
                    })
                    .map(|_| ())
            },
            |_, _| {},
        )?;
        let hidden = folder.config.text.hidden_size;
        let heads = Heads::load(&checkpoint.dir.join("heads.safetensors"), hidden, device)?;
        let (threshold, threshold_source) = match threshold {
            Some(t) => (t, ThresholdSource::Given),
            None => match read_calibration(&checkpoint)? {
                Some((cal, file)) => (
                    cal.threshold,
                    ThresholdSource::Calibrated {
                        file,
                        checkpoint: cal.checkpoint,
                    },
                ),
                None => (DEFAULT_THRESHOLD, ThresholdSource::Default),
            },
        };
        Ok(Pipeline {
            folder,
            heads,
            checkpoint,
            threshold,
            threshold_source,
            max_new_tokens: 128,
            weights,
        })
    }

    fn device(&self) -> &Device {
        self.folder.model.device()
    }

    /// The image through the processor.
    pub fn process(&self, image: &RgbImage) -> anyhow::Result<ProcessedImage> {
        processor::process_image(image, &self.folder.processor)
    }

    fn pixels(&self, processed: &ProcessedImage) -> anyhow::Result<Tensor> {
        let [t, h, w] = processed.grid_thw;
        let rows = (t * h * w) as usize;
        Ok(Tensor::from_slice(
            &processed.pixel_values,
            (rows, self.folder.processor.patch_dim()),
            self.device(),
        )?)
    }

    /// The ROI box from final hidden states `(1, seq, hidden)` and their image-token mask.
    fn locate(
        &self,
        hidden: &Tensor,
        image_mask: &[Vec<bool>],
        grid: [u32; 3],
    ) -> anyhow::Result<[f32; 4]> {
        let mask: Vec<f32> = image_mask
            .iter()
            .flatten()
            .map(|&b| if b { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (image_mask.len(), image_mask[0].len()), self.device())?;
        let coords = image_token_coords(image_mask, &[grid], self.device())?;
        let (boxes, _) =
            self.heads
                .roi
                .forward(&hidden.to_dtype(DType::F32)?, &mask, &coords, None)?;
        let boxes: Vec<Vec<f32>> = boxes.to_vec2()?;
        let b = &boxes[0];
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// The heads on (image, question, text) laid out as a training sample: the box from the
    /// image tokens and the match probability pooled over every token.
    pub fn score_pair(
        &self,
        processed: &ProcessedImage,
        question: &str,
        text: &str,
    ) -> anyhow::Result<PairScore> {
        Ok(self.score_pairs(processed, question, &[text])?[0])
    }

    /// [`score_pair`](Self::score_pair) for several texts about one image, as one batch.
    pub fn score_pairs(
        &self,
        processed: &ProcessedImage,
        question: &str,
        texts: &[&str],
    ) -> anyhow::Result<Vec<PairScore>> {
        let tokenizer = &self.folder.tokenizer;
        let merge = self.folder.processor.merge_size;
        let samples = texts
            .iter()
            .map(|text| {
                let chat = tokenizer.chat(question, processed.image_tokens(merge), Some(text))?;
                Ok(Sample {
                    ids: chat.ids,
                    image: processed.clone(),
                    answer: chat.answer,
                    negative: false,
                    roi: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let special = tokenizer.special();
        let batch = data::collate(
            &samples,
            special.endoftext,
            special.image_pad,
            self.device(),
        )?;
        let out = self.folder.model.forward(&batch.input, Exec::Fused)?;
        self.heads_on(&out.hidden, &batch)
    }

    /// The heads on the final hidden states `(batch, seq, hidden)` of a collated batch.
    fn heads_on(&self, hidden: &Tensor, batch: &data::Batch) -> anyhow::Result<Vec<PairScore>> {
        let hidden = hidden.to_dtype(DType::F32)?;
        let embeds = self.folder.model.token_embeddings(&batch.input)?;
        let (boxes, logits, _) = run_heads(
            &self.heads.roi,
            &self.heads.matcher,
            &hidden,
            &embeds,
            batch,
            None,
        )?;
        let logits: Vec<f32> = logits.to_vec1()?;
        let boxes: Vec<Vec<f32>> = boxes.to_vec2()?;
        Ok(boxes
            .into_iter()
            .zip(logits)
            .map(|(b, l)| PairScore {
                roi: [b[0], b[1], b[2], b[3]],
                match_score: sigmoid(l),
            })
            .collect())
    }

    /// locate -> diagnose -> verify on one image.
    pub fn run(&self, image: &RgbImage, question: &str) -> anyhow::Result<Outcome> {
        self.run_streaming(image, question, |_| ControlFlow::Continue(()))
    }

    /// [`Self::run`], handing the diagnosis so far to `on_text` as each token is generated
    /// (`ControlFlow::Break` stops generation; what was generated is verified).
    pub fn run_streaming(
        &self,
        image: &RgbImage,
        question: &str,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> anyhow::Result<Outcome> {
        let all = Instant::now();
        let started = Instant::now();
        let processed = self.process(image)?;
        let chat = self.folder.tokenizer.chat(
            question,
            processed.image_tokens(self.folder.processor.merge_size),
            None,
        )?;
        let prompt_ids = chat.ids.clone();
        let input = crate::model::qwen3_vl::ModelInput::single(
            chat.ids,
            Some(self.pixels(&processed)?),
            vec![processed.grid_thw],
        );
        let context = self.folder.config.text.max_position_embeddings;
        ensure!(
            input.seq_len() < context,
            "the prompt is {} tokens, the model's context is {context}",
            input.seq_len()
        );
        let preprocess = started.elapsed().as_secs_f64();
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: self.folder.stop_tokens.clone(),
        };
        let mut cache = KvCache::new();
        let mut roi = [0f32; 4];
        let mut locate = 0.0;
        // Final hidden states of every token that went through the model: the prompt's, then
        // one per generated token fed back in.
        let states = std::cell::RefCell::new(Vec::<Tensor>::new());
        let mut so_far: Vec<u32> = Vec::new();
        let generation = generate_observed(
            &self.folder.model,
            &input,
            &config,
            &mut cache,
            |out| {
                let t = Instant::now();
                roi = self.locate(&out.hidden, &out.image_mask, processed.grid_thw)?;
                locate = t.elapsed().as_secs_f64();
                states.borrow_mut().push(out.hidden.clone());
                Ok(())
            },
            |token| {
                so_far.push(token);
                match self.decode_answer(&so_far) {
                    Ok(text) => on_text(&text),
                    Err(_) => ControlFlow::Continue(()),
                }
            },
            |hidden| states.borrow_mut().push(hidden.clone()),
        )?;
        let text = self.decode_answer(&generation.token_ids)?;
        let started = Instant::now();
        let states = states.into_inner();
        let mut fed = prompt_ids;
        fed.extend_from_slice(&generation.token_ids[..states.len().saturating_sub(1)]);
        let states = Tensor::cat(&states, 1)?;
        let (score, verify_tokens) =
            self.verify_cached(&processed, question, &text, &fed, &states, &mut cache)?;
        let verify = started.elapsed().as_secs_f64();
        let (width, height) = image.dimensions();
        let match_score = score.match_score;
        Ok(Outcome {
            roi,
            box_px: box_to_px(roi, width, height),
            width,
            height,
            match_score,
            threshold: self.threshold,
            // Nothing to release: an empty answer is never "verified", whatever the score.
            verified: f64::from(match_score) >= self.threshold && !text.trim().is_empty(),
            generated: text,
            generated_tokens: generation.token_ids.len(),
            verify_tokens,
            timings: Timings {
                preprocess,
                prefill: generation.prefill_seconds - locate,
                locate,
                decode: generation.decode_seconds,
                verify,
                total: all.elapsed().as_secs_f64(),
            },
        })
    }

    /// The heads on (image, question, `text`) laid out as a training sample, reusing what
    /// generation computed: `fed` are the tokens in `cache` (the prompt and the generated
    /// tokens fed back in) and `states` `(1, fed, hidden)` their final hidden states. The pair's
    /// tokens that agree with `fed` from the start keep their states; the cache is cut back to
    /// them and the rest of the pair (normally `<|im_end|>` and a newline; more where the
    /// answer's text tokenizes differently from the generated tokens) runs through the model
    /// one token at a time. Returns the score and how many tokens ran.
    fn verify_cached(
        &self,
        processed: &ProcessedImage,
        question: &str,
        text: &str,
        fed: &[u32],
        states: &Tensor,
        cache: &mut KvCache,
    ) -> anyhow::Result<(PairScore, usize)> {
        let tokenizer = &self.folder.tokenizer;
        let merge = self.folder.processor.merge_size;
        let chat = tokenizer.chat(question, processed.image_tokens(merge), Some(text))?;
        let prompt_len = chat.answer.start;
        let shared = chat.ids.iter().zip(fed).take_while(|(a, b)| a == b).count();
        ensure!(
            shared >= prompt_len && cache.len() == fed.len() && states.dim(1)? == fed.len(),
            "verify: the generation's prompt and states do not match the pair's layout"
        );
        cache.truncate(shared)?;
        let mut parts = vec![states.narrow(1, 0, shared)?];
        for &token in &chat.ids[shared..] {
            parts.push(self.folder.model.step(&[token], cache, Exec::Fused)?);
        }
        let hidden = Tensor::cat(&parts, 1)?;
        let special = tokenizer.special();
        let sample = Sample {
            ids: chat.ids.clone(),
            image: processed.clone(),
            answer: chat.answer,
            negative: false,
            roi: None,
        };
        let batch = data::collate(
            &[sample],
            special.endoftext,
            special.image_pad,
            self.device(),
        )?;
        Ok((self.heads_on(&hidden, &batch)?[0], chat.ids.len() - shared))
    }

    /// The generated answer as text: stop tokens and every added (special) token left out, so
    /// the text re-tokenises to plain text when it is verified (an `<|image_pad|>` in it would
    /// break the image layout). Qwen's added tokens all come after `<|endoftext|>`.
    fn decode_answer(&self, ids: &[u32]) -> anyhow::Result<String> {
        let first_added = self.folder.tokenizer.special().endoftext;
        let plain: Vec<u32> = ids.iter().copied().filter(|&t| t < first_added).collect();
        Ok(self.folder.tokenizer.decode(&plain)?.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_in_pixels_stay_inside_the_image() {
        assert_eq!(box_to_px([0.1, 0.2, 0.5, 0.6], 100, 50), [10, 10, 40, 20]);
        assert_eq!(box_to_px([1.0, 1.0, 1.0, 1.0], 100, 50), [99, 49, 1, 1]);
        assert_eq!(box_to_px([0.0, 0.0, 1.0, 1.0], 7, 3), [0, 0, 7, 3]);
    }
}
