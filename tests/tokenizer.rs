//! The bundled Qwen3 tokenizer and the chat layout against Hugging Face `tokenizers` and the
//! chat template (fixtures made by `tests/fixtures/make_tokenizer_fixtures.py`).

use roiscope::model::tokenizer::QwenTokenizer;
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn special_tokens_are_the_qwen3_ones() {
    let tok = QwenTokenizer::bundled().unwrap();
    let r = reference();
    let s = tok.special();
    assert_eq!(s.endoftext, 151_643);
    assert_eq!(s.im_start, 151_644);
    assert_eq!(s.im_end, 151_645);
    assert_eq!(s.vision_start, 151_652);
    assert_eq!(s.vision_end, 151_653);
    assert_eq!(s.image_pad, 151_655);
    assert_eq!(r["specials"]["<|image_pad|>"], 151_655);
}

#[test]
fn texts_tokenize_to_the_same_ids_and_back() {
    let tok = QwenTokenizer::bundled().unwrap();
    for case in reference()["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "round trip of {text:?}");
    }
}

#[test]
fn chat_prompts_follow_the_template() {
    let tok = QwenTokenizer::bundled().unwrap();
    for case in reference()["chats"].as_array().unwrap() {
        let question = case["question"].as_str().unwrap();
        let pads = case["image_tokens"].as_u64().unwrap() as usize;
        let answer = case["answer"].as_str().unwrap();
        let prompt = tok.chat(question, pads, None).unwrap();
        assert_eq!(prompt.ids, ids(&case["prompt_ids"]), "{question:?}");
        assert!(prompt.answer.is_empty());
        let full = tok.chat(question, pads, Some(answer)).unwrap();
        assert_eq!(full.ids, ids(&case["full_ids"]), "{question:?}");
        assert_eq!(full.ids[..prompt.ids.len()], prompt.ids[..]);
        // The image block and the answer are where the ranges say.
        assert!(full.ids[full.image.clone()]
            .iter()
            .all(|&t| t == tok.special().image_pad));
        assert_eq!(full.image.len(), pads);
        assert_eq!(full.ids[full.image.start - 1], tok.special().vision_start);
        assert_eq!(full.ids[full.image.end], tok.special().vision_end);
        let answer_ids = &full.ids[full.answer.clone()];
        assert_eq!(*answer_ids.last().unwrap(), tok.special().im_end);
        assert_eq!(
            tok.decode(&answer_ids[..answer_ids.len() - 1]).unwrap(),
            answer
        );
    }
}

#[test]
fn bad_inputs_are_refused() {
    let tok = QwenTokenizer::bundled().unwrap();
    assert!(tok.chat("<image><image>two images", 2, None).is_err());
    assert!(tok.chat("no image tokens", 0, None).is_err());
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("tokenizer.json");
    std::fs::write(&fake, b"{\"not\": \"a tokenizer\"}").unwrap();
    let err = QwenTokenizer::from_file(&fake).err().unwrap();
    assert!(err.to_string().contains("not a tokenizer.json"), "{err}");
    assert!(QwenTokenizer::from_file(&tmp.path().join("missing.json")).is_err());
}
