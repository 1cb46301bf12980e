//! Issue 25: inference weights (bf16, Q8_0, Q4K) against f32 on the parity models, and verify
//! from the states generation computed, against the two-pass verify.

#[path = "support/qwen3vl.rs"]
mod support;

use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use roiscope::data::image_io::{load_rgb8, LoadOptions};
use roiscope::infer::{Pipeline, DEFAULT_QUESTION};
use roiscope::model::generate::{generate, GenerationConfig, Sampling};
use roiscope::model::ops::Exec;
use roiscope::model::quantized::{open_folder, WeightFormat};
use roiscope::model::text::KvCache;
use support::{fixtures, max_abs_diff, model_dir};

fn image(name: &str) -> image::RgbImage {
    load_rgb8(
        &fixtures().join("images").join(name),
        LoadOptions::default(),
    )
    .unwrap()
}

fn pipeline_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline")
}

/// Logits of every prompt position and 12 greedy tokens of one model folder in `format`.
fn logits_and_tokens(dir: &std::path::Path, format: WeightFormat) -> (Tensor, Vec<u32>, String) {
    let (folder, report) = open_folder(dir, format, &Device::Cpu, |_| Ok(()), |_, _| {}).unwrap();
    let prompt = folder
        .prompt(Some(&image("wide.png")), "Describe this image.")
        .unwrap();
    let out = folder.model.forward(&prompt.input, Exec::Fused).unwrap();
    let logits = folder
        .model
        .logits(&out.hidden.i(0).unwrap())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let config = GenerationConfig {
        max_new_tokens: 12,
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
    };
    let tokens = generate(
        &folder.model,
        &prompt.input,
        &config,
        &mut KvCache::new(),
        |_| ControlFlow::Continue(()),
    )
    .unwrap()
    .token_ids;
    (logits, tokens, report.summary())
}

/// Every format computes the same model as f32 up to its rounding: the logits of every prompt
/// position stay within a bound relative to their spread, and greedy tokens agree. The numbers
/// go to stderr (README, "Inference weights" records them). Parity model `b` has hidden size 48,
/// which no GGML block divides: its layers fall back (Q8_0 keeps only the MLP's down projection,
/// in 96), and the report says how many.
#[test]
fn packed_weights_agree_with_f32_on_the_parity_models() {
    for name in ["a", "b"] {
        let dir = model_dir(name);
        let (want, want_tokens, _) = logits_and_tokens(dir.path(), WeightFormat::F32);
        let spread = want.max_all().unwrap().to_scalar::<f32>().unwrap()
            - want.min_all().unwrap().to_scalar::<f32>().unwrap();
        for (format, bound) in [
            (WeightFormat::Bf16, 0.02),
            (WeightFormat::Q8_0, 0.03),
            (WeightFormat::Q4K, 0.15),
        ] {
            let (got, tokens, summary) = logits_and_tokens(dir.path(), format);
            let rel = max_abs_diff(&got, &want) / spread;
            let same = tokens
                .iter()
                .zip(&want_tokens)
                .take_while(|(a, b)| a == b)
                .count();
            eprintln!(
                "model {name}, {format}: max |logit - f32 logit| / f32 logit range = {rel:.5}, \
                 greedy tokens equal to f32 for {same} of {} ({summary})",
                want_tokens.len()
            );
            assert!(rel < bound, "model {name}, {format}: {rel}");
        }
    }
}

/// Verify reuses the states of the prompt and of the generated tokens: only the tokens of the
/// (image, diagnosis) pair that generation did not feed in run through the model, and the match
/// score and box equal those of running the whole pair again (`score_pair`), in f32 and with
/// Q8_0 weights (the adapter merged).
#[test]
fn single_pass_verify_equals_the_two_pass_verify() {
    let dir = model_dir("b");
    for format in [WeightFormat::F32, WeightFormat::Q8_0] {
        let mut pipeline =
            Pipeline::open_in(dir.path(), &pipeline_dir(), None, format, &Device::Cpu).unwrap();
        if format != WeightFormat::F32 {
            assert_eq!(
                pipeline.weights.merged_adapters, 12,
                "4 layers x (q, v, gate)"
            );
        }
        for (img, tokens) in [("square.png", 10), ("tall.png", 3)] {
            pipeline.max_new_tokens = tokens;
            let img = image(img);
            let mut streamed = Vec::new();
            let outcome = pipeline
                .run_streaming(&img, DEFAULT_QUESTION, |text| {
                    streamed.push(text.to_string());
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(streamed.len(), outcome.generated_tokens);
            assert_eq!(streamed.last().unwrap(), &outcome.generated);
            let processed = pipeline.process(&img).unwrap();
            let two_pass = pipeline
                .score_pair(&processed, DEFAULT_QUESTION, &outcome.generated)
                .unwrap();
            let diff = (outcome.match_score - two_pass.match_score).abs();
            eprintln!(
                "{format}: {} generated, {} run again for verify; match {} vs {} two-pass",
                outcome.generated_tokens,
                outcome.verify_tokens,
                outcome.match_score,
                two_pass.match_score
            );
            assert!(diff < 1e-4, "{format}: match {diff}");
            for (a, b) in outcome.roi.iter().zip(two_pass.roi) {
                assert!((a - b).abs() < 1e-4, "{format}: box");
            }
            let merge = pipeline.folder.processor.merge_size;
            let tokenizer = &pipeline.folder.tokenizer;
            let prompt = tokenizer
                .chat(DEFAULT_QUESTION, processed.image_tokens(merge), None)
                .unwrap();
            let pair = tokenizer
                .chat(
                    DEFAULT_QUESTION,
                    processed.image_tokens(merge),
                    Some(&outcome.generated),
                )
                .unwrap();
            assert!(
                outcome.verify_tokens <= pair.ids.len() - prompt.ids.len(),
                "no second prefill of the prompt"
            );
        }
    }
}
