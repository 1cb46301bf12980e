//! Training examples from a project, negatives, and batches the model and heads take.
//!
//! A positive sample is a record's question and image with its diagnosis as the answer: the LM
//! learns the answer tokens only (DESIGN 4.6), the ROI head the record's box, the match head
//! label 1. A negative keeps the question and answer but takes another record's image, run through
//! the processor again so the grid and the `<|image_pad|>` count are the new image's (DESIGN 4.3);
//! its LM and ROI losses are masked and its match label is 0. Each sample becomes a negative with
//! probability `ratio`, so the expected share holds at any batch size (DESIGN 4.2).

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};

use crate::data::image_io::{self, LoadOptions};
use crate::data::store::{Project, RecordFilter, Split};
use crate::model::processor::{self, ImageProcessorConfig, ProcessedImage};
use crate::model::qwen3_vl::ModelInput;
use crate::model::random::SplitMix;
use crate::model::tokenizer::QwenTokenizer;

use super::heads::image_token_coords;
use super::meaning::Meanings;

/// One record, ready to become samples.
#[derive(Debug, Clone)]
pub struct Example {
    pub record_id: i64,
    /// The marker-free training image (the cache copy when the record had a drawn box).
    pub image: PathBuf,
    pub question: String,
    pub answer: String,
    /// The ground-truth box (corrected, else detected), image-relative.
    pub roi: Option<[f32; 4]>,
    /// Modality and organ, for hard negatives.
    pub stratum: String,
    /// What the diagnosis says ([`super::meaning::Meanings::key`]): a negative's image and an
    /// evaluation's mismatched text come from a record whose meaning differs.
    pub meaning: String,
}

/// The examples of one split, in record order.
pub fn load_examples(project: &Project, split: Split) -> anyhow::Result<Vec<Example>> {
    Ok(load_examples_with_meanings(project, split)?.0)
}

/// [`load_examples`], with how the project's diagnoses are grouped by meaning (found over all
/// its records, every split).
pub fn load_examples_with_meanings(
    project: &Project,
    split: Split,
) -> anyhow::Result<(Vec<Example>, Meanings)> {
    // One pass over the project: every record's diagnosis and fields for the meanings, the
    // split's records for the examples (their meaning is set once the rule is known).
    let mut all: Vec<(String, Option<serde_json::Map<String, serde_json::Value>>)> = Vec::new();
    let mut out = Vec::new();
    let mut of_example = Vec::new();
    let mut problems = Vec::new();
    project.for_each_record(RecordFilter::All, |r| {
        all.push((r.diagnosis.clone(), r.fields.clone()));
        if r.split != Some(split) {
            return Ok(());
        }
        let Some(q) = crate::data::record::user_question(&r.record).map(str::to_string) else {
            problems.push(format!("record {} has no user question", r.id));
            return Ok(());
        };
        let roi = r.ground_truth().map(|b| b.coords.map(|c| c as f32));
        out.push(Example {
            record_id: r.id,
            image: project.training_image_path(&r),
            question: q,
            answer: r.diagnosis.clone(),
            roi,
            stratum: r.stratum.clone(),
            meaning: String::new(),
        });
        of_example.push(all.len() - 1);
        Ok(())
    })?;
    let meanings = Meanings::detect(all.iter().map(|(d, f)| (d.as_str(), f.as_ref())));
    for (example, &i) in out.iter_mut().zip(&of_example) {
        example.meaning = meanings.key(&all[i].0, all[i].1.as_ref());
    }
    if !problems.is_empty() {
        bail!(
            "{} records cannot be trained on: {}",
            problems.len(),
            problems.join("; ")
        );
    }
    Ok((out, meanings))
}

/// The index of another example whose diagnosis says something else ([`Example::meaning`]; the
/// next one round the list), if any: the mismatched pair of evaluation and validation.
pub fn mismatched_partner(examples: &[Example], i: usize) -> Option<usize> {
    let n = examples.len();
    (1..n)
        .map(|k| (i + k) % n)
        .find(|&j| examples[j].meaning != examples[i].meaning)
}

/// One tokenised sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub ids: Vec<u32>,
    pub image: ProcessedImage,
    /// Positions of the answer tokens (its `<|im_end|>` included).
    pub answer: std::ops::Range<usize>,
    pub negative: bool,
    pub roi: Option<[f32; 4]>,
}

/// How negatives are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NegativeConfig {
    /// Probability that a sample becomes a negative.
    pub ratio: f64,
    /// Prefer another record of the same modality and organ with a different answer.
    pub hard: bool,
}

impl Default for NegativeConfig {
    fn default() -> Self {
        NegativeConfig {
            ratio: 0.3,
            hard: false,
        }
    }
}

/// Chooses, for each example in a batch, whether it becomes a negative and whose image it takes.
/// `None`: a positive. Another record whose diagnosis says the same ([`Example::meaning`]) is
/// never chosen (it would be a true pair); when there is none, the sample stays positive.
pub fn draw_partners(
    batch: &[usize],
    examples: &[Example],
    config: NegativeConfig,
    rng: &mut SplitMix,
) -> Vec<Option<usize>> {
    batch
        .iter()
        .map(|&i| {
            if rng.uniform() >= config.ratio {
                return None;
            }
            let me = &examples[i];
            let other_answer = |j: &usize| examples[*j].meaning != me.meaning;
            let all: Vec<usize> = (0..examples.len()).filter(other_answer).collect();
            let pool: Vec<usize> = if config.hard {
                let same: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&j| examples[j].stratum == me.stratum)
                    .collect();
                if same.is_empty() {
                    all
                } else {
                    same
                }
            } else {
                all
            };
            if pool.is_empty() {
                return None;
            }
            Some(pool[(rng.next_u64() % pool.len() as u64) as usize])
        })
        .collect()
}

/// Builds the sample for `example`, with the image of `image_of` (itself for a positive).
pub fn build_sample(
    example: &Example,
    image_of: &Example,
    tokenizer: &QwenTokenizer,
    processor_config: &ImageProcessorConfig,
) -> anyhow::Result<Sample> {
    let img = image_io::load_rgb8(&image_of.image, LoadOptions::default())
        .with_context(|| format!("cannot read {}", image_of.image.display()))?;
    let image = processor::process_image(&img, processor_config)
        .with_context(|| format!("{}", image_of.image.display()))?;
    let chat = tokenizer.chat(
        &example.question,
        image.image_tokens(processor_config.merge_size),
        Some(&example.answer),
    )?;
    let negative = example.record_id != image_of.record_id;
    Ok(Sample {
        ids: chat.ids,
        image,
        answer: chat.answer,
        negative,
        roi: if negative { None } else { example.roi },
    })
}

/// A batch in the shapes the model, the heads and the losses take.
pub struct Batch {
    pub input: ModelInput,
    /// `(batch, seq)` 1 at image tokens.
    pub image_mask: Tensor,
    /// `(batch, seq, 2)` where each image token sits in its image (`heads::image_token_coords`).
    pub coords: Tensor,
    /// `(batch, seq)` 1 at real tokens.
    pub valid: Tensor,
    /// `(batch, 4)` boxes (zeros where there is none) and `(batch)` 1 where the ROI loss counts.
    pub roi_target: Tensor,
    pub roi_weight: Tensor,
    /// `(batch)` 1 for true pairs, 0 for negatives.
    pub labels: Tensor,
    /// `(row, position, token)`: the state at `position` predicts `token`; answers of positives.
    pub lm_targets: Vec<(usize, usize, u32)>,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// What the losses of a whole batch are divided by. A replica holding a part of the batch
/// divides by these, not by its own counts, so the parts' losses and gradients add up to the
/// whole batch's (DESIGN 4, devices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    /// Samples with an ROI box that counts.
    pub roi_rows: f64,
    pub samples: f64,
    /// Answer tokens of the positives (the LM targets).
    pub lm_targets: f64,
}

impl Counts {
    /// Which tasks (roi, match, lm) have a sample in the batch.
    pub fn present(&self) -> [bool; 3] {
        [
            self.roi_rows > 0.5,
            self.samples > 0.5,
            self.lm_targets > 0.5,
        ]
    }

    pub fn of(samples: &[Sample]) -> Self {
        Counts {
            roi_rows: samples.iter().filter(|s| s.roi.is_some()).count() as f64,
            samples: samples.len() as f64,
            lm_targets: samples
                .iter()
                .filter(|s| !s.negative)
                .map(|s| s.answer.len())
                .sum::<usize>() as f64,
        }
    }
}

/// Pads `samples` on the left and stacks their images.
pub fn collate(
    samples: &[Sample],
    pad_id: u32,
    image_token: u32,
    device: &Device,
) -> anyhow::Result<Batch> {
    let rows: Vec<Vec<u32>> = samples.iter().map(|s| s.ids.clone()).collect();
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for s in samples {
        let [t, h, w] = s.image.grid_thw;
        let n = (t * h * w) as usize;
        pixels.push(Tensor::from_slice(
            &s.image.pixel_values,
            (n, s.image.pixel_values.len() / n),
            device,
        )?);
        grids.push(s.image.grid_thw);
    }
    let input =
        ModelInput::left_padded(rows, pad_id, Some(Tensor::cat(&pixels, 0)?), grids.clone());
    let mut image_mask = Vec::with_capacity(samples.len() * len);
    let mut image_rows = Vec::with_capacity(samples.len());
    let mut valid = Vec::with_capacity(samples.len() * len);
    let mut lm_targets = Vec::new();
    for (row, (ids, ok)) in input.input_ids.iter().zip(&input.valid).enumerate() {
        let flags: Vec<bool> = ids
            .iter()
            .zip(ok)
            .map(|(&id, &v)| v && id == image_token)
            .collect();
        for (&flag, &v) in flags.iter().zip(ok) {
            image_mask.push(if flag { 1f32 } else { 0.0 });
            valid.push(if v { 1f32 } else { 0.0 });
        }
        image_rows.push(flags);
        let s = &samples[row];
        if !s.negative {
            let shift = len - s.ids.len();
            for pos in s.answer.clone() {
                lm_targets.push((row, shift + pos - 1, s.ids[pos]));
            }
        }
    }
    let b = samples.len();
    let roi: Vec<f32> = samples
        .iter()
        .flat_map(|s| s.roi.unwrap_or([0.0; 4]))
        .collect();
    let roi_weight: Vec<f32> = samples
        .iter()
        .map(|s| if s.roi.is_some() { 1.0 } else { 0.0 })
        .collect();
    let labels: Vec<f32> = samples
        .iter()
        .map(|s| if s.negative { 0.0 } else { 1.0 })
        .collect();
    let tokens = valid.iter().filter(|&&v| v > 0.0).count();
    Ok(Batch {
        input,
        image_mask: Tensor::from_vec(image_mask, (b, len), device)?,
        coords: image_token_coords(&image_rows, &grids, device)?,
        valid: Tensor::from_vec(valid, (b, len), device)?,
        roi_target: Tensor::from_vec(roi, (b, 4), device)?,
        roi_weight: Tensor::from_vec(roi_weight, b, device)?,
        labels: Tensor::from_vec(labels, b, device)?,
        lm_targets,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(id: i64, answer: &str, stratum: &str) -> Example {
        Example {
            record_id: id,
            image: PathBuf::new(),
            question: "q".into(),
            answer: answer.into(),
            roi: None,
            stratum: stratum.into(),
            meaning: answer.to_lowercase(),
        }
    }

    /// The seed's `int(batch * 0.3)` gave no negative at batch size 2; drawing per sample keeps
    /// the share at any size.
    #[test]
    fn negatives_occur_at_batch_size_two() {
        let examples: Vec<Example> = (0..10)
            .map(|i| example(i, &format!("d{}", i % 3), "CT|lung"))
            .collect();
        let mut rng = SplitMix::new(4);
        let config = NegativeConfig::default();
        let mut negatives = 0;
        let draws = 2000;
        for k in 0..draws {
            let batch = [k % 10, (k + 1) % 10];
            for (slot, p) in draw_partners(&batch, &examples, config, &mut rng)
                .iter()
                .enumerate()
            {
                if let Some(j) = p {
                    negatives += 1;
                    assert_ne!(examples[*j].answer, examples[batch[slot]].answer);
                }
            }
        }
        let share = negatives as f64 / (2 * draws) as f64;
        assert!((share - 0.3).abs() < 0.03, "{share}");
    }

    #[test]
    fn hard_negatives_keep_the_stratum() {
        let examples = vec![
            example(0, "a", "CT|lung"),
            example(1, "b", "CT|lung"),
            example(2, "c", "MR|brain"),
        ];
        let mut rng = SplitMix::new(1);
        let config = NegativeConfig {
            ratio: 1.0,
            hard: true,
        };
        for _ in 0..50 {
            assert_eq!(draw_partners(&[0], &examples, config, &mut rng), [Some(1)]);
        }
    }
}
