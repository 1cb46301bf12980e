//! Model folders and adapters that the Hugging Face tools open without hand work.
//! `tests/fixtures/hf_folder/chat.json` is written by
//! `tests/fixtures/make_hf_folder_fixtures.py`: transformers' `AutoProcessor` on an `init-model`
//! folder rendering conversations with `apply_chat_template`, and peft's `AutoPeftModel` loading
//! a roiscope adapter.

#[path = "support/qwen3vl.rs"]
mod support;

use std::path::PathBuf;

use candle_core::{DType, Device};
use roiscope::model::folder::{init_model, InitSize, ModelFolder, CHAT_TEMPLATE};
use roiscope::model::tokenizer::QwenTokenizer;
use roiscope::train::lora::{self, LoraConfig};
use serde_json::Value;

fn chat_fixture() -> Value {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hf_folder/chat.json"
    ));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn init_model_writes_the_chat_template_transformers_rendered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    init_model(InitSize::Tiny, &dir, DType::F32, 0, |_, _| {}).unwrap();
    let template = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    assert_eq!(template, CHAT_TEMPLATE);
    let fixture = chat_fixture();
    assert_eq!(
        fixture["chat_template"], template,
        "init-model's template changed: rerun make_hf_folder_fixtures.py"
    );
    assert_eq!(fixture["processor_class"], "Qwen3VLProcessor");
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["tokenizer_class"], "Qwen2Tokenizer");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["pad_token"], "<|endoftext|>");
    // roiscope itself still opens the folder.
    ModelFolder::open(&dir, DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn apply_chat_template_gives_roiscopes_prompt_tokens() {
    let fixture = chat_fixture();
    let tokenizer = QwenTokenizer::bundled().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let grid: Vec<usize> = serde_json::from_value(case["image_grid_thw"].clone()).unwrap();
        let tokens = grid.iter().product::<usize>() / 4;
        let chat = tokenizer
            .chat(
                case["question"].as_str().unwrap(),
                tokens,
                case["answer"].as_str(),
            )
            .unwrap();
        let want: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(chat.ids, want, "{name}");
        // The rendered text, image block collapsed, is roiscope's decoded prompt.
        let text = tokenizer
            .decode(&chat.ids)
            .unwrap()
            .replace(&"<|image_pad|>".repeat(tokens), "<|image_pad|>");
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn adapter_config_names_the_base_folder_and_the_class_to_load() {
    let model = support::model_dir("a");
    let mut folder = ModelFolder::open(model.path(), DType::F32, &Device::Cpu).unwrap();
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let set = lora::attach(&mut folder.model, &config, 1, &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    // As typed on a command line, relative to the working folder.
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(model.path(), &cwd);
    set.save_peft(out.path(), &relative).unwrap();
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    let base = PathBuf::from(v["base_model_name_or_path"].as_str().unwrap());
    assert!(base.is_absolute(), "{base:?}");
    assert_eq!(base, model.path().canonicalize().unwrap());
    assert!(v["task_type"].is_null());
    assert_eq!(
        v["auto_mapping"]["base_model_class"],
        "Qwen3VLForConditionalGeneration"
    );
    // What peft's AutoPeftModel did with such a config (make_hf_folder_fixtures.py).
    let auto = &chat_fixture()["auto_peft"];
    assert_eq!(auto["auto_mapping"], v["auto_mapping"]);
    assert_eq!(auto["base_class"], "Qwen3VLForConditionalGeneration");
    assert_eq!(auto["logits_equal_peft_model"], true);
    // A name that is no folder stays as given (a Hub id).
    set.save_peft(out.path(), "Qwen/Qwen3-VL-2B-Instruct")
        .unwrap();
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(v["base_model_name_or_path"], "Qwen/Qwen3-VL-2B-Instruct");
    // roiscope reads its own config back.
    let mut fresh = ModelFolder::open(model.path(), DType::F32, &Device::Cpu).unwrap();
    lora::load_peft(&mut fresh.model, out.path(), &Device::Cpu).unwrap();
}

/// `path` relative to `base` (both absolute), for a base-model name as a user types it.
fn pathdiff(path: &std::path::Path, base: &std::path::Path) -> String {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out: Vec<String> = vec!["..".into(); b.len() - common];
    out.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    out.join("/")
}
