//! One seed-format record: what `prepare` takes in and `export` gives back.
//!
//! A record is a LLaMA-Factory "sharegpt" object: `messages` (a user question and an assistant
//! answer that is either plain text or `{"extractions": {field: value, ...}}`), `images`, and any
//! other keys, which are kept verbatim. `roi_coords` and `target_diag` are outputs of `prepare`:
//! on input they are read as a box and a diagnosis given by the file, and they are left out of
//! the record's identity so that importing an export finds the same records.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The field used as the diagnosis target unless the user names another.
pub const DEFAULT_DIAGNOSIS_FIELD: &str = "Clinical Diagnosis Tips";

/// Keys that `prepare` derives and `export` writes; not part of a record's identity.
pub const DERIVED_KEYS: &[&str] = &["roi_coords", "target_diag", "roiscope"];

/// Why a record cannot be imported, grouped in the prepare report by [`SkipReason::code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The array element is not a JSON object.
    NotAnObject,
    /// A required key is missing or has the wrong type.
    MissingField(&'static str),
    /// The answer has no diagnosis under the chosen field.
    NoDiagnosisField(String),
    /// The same record appeared earlier in the input.
    Duplicate { first_index: usize },
    /// The image path is absolute outside the data root or climbs out of it with `..`.
    PathOutsideRoot(String),
    /// With `--stay-in-root`: the image path passes through a symbolic link (`link`, relative
    /// to the data root) that points outside the data root (`target`).
    LinkOutsideRoot {
        image: String,
        link: String,
        target: String,
    },
    /// The image path names a FIFO, a device, a socket or a folder (`kind`).
    NotRegularFile { image: String, kind: &'static str },
    /// The image file does not exist.
    MissingImage(String),
    /// The image exists but cannot be decoded.
    UnreadableImage(String),
    /// No ROI box was found and `--skip-unboxed` was given.
    NoBoxFound,
    /// The `roi_coords` given by the file are not a valid normalised box.
    InvalidRoiCoords(String),
    /// The question or diagnosis cannot be trained on ([`check_training_text`]).
    UnfitText(String),
}

impl SkipReason {
    /// A stable short name for grouping and for the database.
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::NotAnObject | SkipReason::MissingField(_) => "missing field",
            SkipReason::NoDiagnosisField(_) => "no diagnosis field",
            SkipReason::Duplicate { .. } => "duplicate",
            SkipReason::PathOutsideRoot(_) | SkipReason::LinkOutsideRoot { .. } => {
                "path outside the data root"
            }
            SkipReason::NotRegularFile { .. } => "not a regular file",
            SkipReason::MissingImage(_) => "missing image",
            SkipReason::UnreadableImage(_) => "unreadable image",
            SkipReason::NoBoxFound => "no box found",
            SkipReason::InvalidRoiCoords(_) => "invalid roi_coords",
            SkipReason::UnfitText(_) => "text the trainer cannot take",
        }
    }

    /// The particulars of this record, for the report.
    pub fn detail(&self) -> String {
        match self {
            SkipReason::NotAnObject => "the array element is not a JSON object".into(),
            SkipReason::MissingField(what) => format!("missing or malformed {what}"),
            SkipReason::NoDiagnosisField(field) => format!("the answer has no \"{field}\""),
            SkipReason::Duplicate { first_index } => {
                format!("same content as record {}", first_index + 1)
            }
            SkipReason::PathOutsideRoot(p) => format!("{p} leaves the data root"),
            SkipReason::LinkOutsideRoot {
                image,
                link,
                target,
            } => format!(
                "{image}: {link} is a symbolic link to {target}, outside the data root \
                 (refused because of --stay-in-root; without it links are followed)"
            ),
            SkipReason::NotRegularFile { image, kind } => {
                format!("{image} is {kind}, not a regular file")
            }
            SkipReason::MissingImage(p) => format!("{p} does not exist"),
            SkipReason::UnreadableImage(e) => e.clone(),
            SkipReason::NoBoxFound => "no green ROI box in the image".into(),
            SkipReason::InvalidRoiCoords(e) | SkipReason::UnfitText(e) => e.clone(),
        }
    }
}

/// The longest question or diagnosis a record may have, in characters: far above any report
/// (a long one is a few thousand), far below what would make one training sample exhaust memory.
pub const MAX_TEXT_CHARS: usize = 20_000;

/// Why the trainer could not take `text` (the record's `what`: "question" or "diagnosis"): a
/// chat-template special token typed into it (`<|image_pad|>`, `<|im_end|>`, ...) would be read
/// as the token itself, a second `<image>` in the question asks for an image the record does not
/// have, and a text over [`MAX_TEXT_CHARS`] would make one sample too long to train on.
pub fn check_training_text(what: &str, text: &str) -> Result<(), String> {
    if let Some(token) = special_token(text) {
        return Err(format!(
            "the {what} holds the special token {token}, which would be read as the token itself"
        ));
    }
    if what == "question" && text.matches("<image>").count() > 1 {
        return Err("the question holds more than one <image>; one image per record".into());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "the {what} has {chars} characters, more than the {MAX_TEXT_CHARS} a training sample \
             may hold"
        ));
    }
    Ok(())
}

/// The first `<|name|>` in `text` (a name of letters, digits and `_`).
fn special_token(text: &str) -> Option<&str> {
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("<|") {
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with("|>") {
            let begin = offset + start;
            return Some(&text[begin..begin + 2 + name_len + 2]);
        }
        offset += start + 2;
        rest = after;
    }
    None
}

/// The user question of a record (the first user message's text), if it has one.
pub fn user_question(record: &Map<String, Value>) -> Option<&str> {
    record
        .get("messages")?
        .as_array()?
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?
        .get("content")?
        .as_str()
}

/// The answer of a record: structured fields or plain text.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `{"extractions": {...}}`, the fields in file order, values verbatim.
    Fields(Map<String, Value>),
    /// A plain-text answer, which is itself the diagnosis.
    Text(String),
}

/// A record as read from the input, validated.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// The object as given, minus [`DERIVED_KEYS`].
    pub record: Map<String, Value>,
    /// The first image path, as written in the file.
    pub image: String,
    pub answer: Answer,
    /// The diagnosis target: `target_diag` from the file, else the chosen field, else the text.
    pub diagnosis: String,
    /// Whether the file gave the diagnosis as `target_diag`.
    pub diagnosis_given: bool,
    /// A normalised box given by the file (`roi_coords`), if any.
    pub given_box: Option<[f64; 4]>,
    /// The `roiscope` block of a JSON-lines export, if any (status, split, boxes by source).
    pub roiscope: Option<Value>,
    /// SHA-256 of the canonical record (derived keys excluded), hex: the record's identity.
    pub key: String,
}

/// Validates one input element.
pub fn parse_source(value: Value, diagnosis_field: &str) -> Result<SourceRecord, SkipReason> {
    let Value::Object(mut record) = value else {
        return Err(SkipReason::NotAnObject);
    };
    let given_box = match record.shift_remove("roi_coords") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_box(&v)?),
    };
    let given_diag = match record.shift_remove("target_diag") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let roiscope = record.shift_remove("roiscope");
    let image = match record.get("images") {
        Some(Value::Array(images)) => match images.first() {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(SkipReason::MissingField("\"images\"[0]")),
        },
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(SkipReason::MissingField("\"images\"")),
    };
    let messages = match record.get("messages") {
        Some(Value::Array(m)) => m,
        _ => return Err(SkipReason::MissingField("\"messages\"")),
    };
    let assistant = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .and_then(|m| m.get("content"))
        .ok_or(SkipReason::MissingField("assistant message"))?;
    let answer = match assistant {
        Value::String(s) => Answer::Text(s.clone()),
        Value::Object(o) => match o.get("extractions") {
            Some(Value::Object(fields)) => Answer::Fields(fields.clone()),
            _ => return Err(SkipReason::MissingField("assistant \"extractions\"")),
        },
        _ => return Err(SkipReason::MissingField("assistant content")),
    };
    let diagnosis_given = given_diag.is_some();
    let diagnosis = match (given_diag, &answer) {
        (Some(d), _) => d,
        (None, Answer::Text(t)) => t.clone(),
        (None, Answer::Fields(fields)) => match fields.get(diagnosis_field) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return Err(SkipReason::NoDiagnosisField(diagnosis_field.to_string())),
        },
    };
    // The trainer lays every sample out as the record's question and its answer: a record
    // without a question would be accepted here and then stop a training run.
    let question = user_question(&record).ok_or(SkipReason::MissingField(
        "user question (a user message's text)",
    ))?;
    check_training_text("question", question).map_err(SkipReason::UnfitText)?;
    check_training_text("diagnosis", &diagnosis).map_err(SkipReason::UnfitText)?;
    let key = record_key(&record);
    Ok(SourceRecord {
        record,
        image,
        answer,
        diagnosis,
        diagnosis_given,
        given_box,
        roiscope,
        key,
    })
}

/// A normalised `[x1, y1, x2, y2]` box with `0 <= x1 < x2 <= 1` and the same for y.
pub fn parse_box(value: &Value) -> Result<[f64; 4], SkipReason> {
    let bad = |why: &str| SkipReason::InvalidRoiCoords(format!("roi_coords {value}: {why}"));
    let items = value.as_array().ok_or_else(|| bad("not an array"))?;
    if items.len() != 4 {
        return Err(bad("expected 4 numbers"));
    }
    let mut b = [0.0; 4];
    for (slot, item) in b.iter_mut().zip(items) {
        *slot = item.as_f64().ok_or_else(|| bad("not a number"))?;
    }
    if !b.iter().all(|v| (0.0..=1.0).contains(v)) {
        return Err(bad("outside [0, 1]"));
    }
    if b[0] >= b[2] || b[1] >= b[3] {
        return Err(bad("empty or inverted box"));
    }
    Ok(b)
}

/// The identity of a record: SHA-256 over its canonical JSON (keys sorted at every level), so
/// key order and whitespace in the file do not matter but every value does.
pub fn record_key(record: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    hash_object(record, &mut hasher);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_object(map: &Map<String, Value>, hasher: &mut Sha256) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    hasher.update(b"{");
    for k in keys {
        hasher.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
        hasher.update(b":");
        hash_canonical(&map[k], hasher);
        hasher.update(b",");
    }
    hasher.update(b"}");
}

fn hash_canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => hash_object(map, hasher),
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                hash_canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        other => hasher.update(other.to_string().as_bytes()),
    }
}

/// The record with its answer's fields replaced by `fields` (after edits in the project).
pub fn with_fields(record: &Map<String, Value>, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut out = record.clone();
    if let Some(Value::Array(messages)) = out.get_mut("messages") {
        for m in messages.iter_mut() {
            if m.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            if let Some(Value::Object(content)) = m.get_mut("content") {
                content.insert("extractions".into(), Value::Object(fields.clone()));
            }
            break;
        }
    }
    out
}

/// The modality/organ stratum used to balance splits: the values of the first fields whose
/// names contain "modality" and "organ", lower-cased and cut at the first parenthesis.
pub fn stratum(answer: &Answer) -> String {
    let Answer::Fields(fields) = answer else {
        return String::new();
    };
    let pick = |needle: &str| {
        fields
            .iter()
            .find(|(k, _)| k.to_lowercase().contains(needle))
            .and_then(|(_, v)| v.as_str())
            .map(|s| {
                s.split(['(', '（'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    let (m, o) = (pick("modality"), pick("organ"));
    if m.is_empty() && o.is_empty() {
        String::new()
    } else {
        format!("{m} / {o}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "messages": [
                {"role": "user", "content": "<image>What is shown?"},
                {"role": "assistant", "content": {"extractions": {
                    "Modality": "CT (axial)", "Organ": "Liver",
                    "Clinical Diagnosis Tips": "suggestive of a cyst", "Extra": [1, 2]}}}
            ],
            "images": ["mllm_data/a.jpg"],
            "source": {"dataset": "x"}
        })
    }

    #[test]
    fn fields_answer_gives_diagnosis_and_keeps_unknown_keys() {
        let r = parse_source(sample(), DEFAULT_DIAGNOSIS_FIELD).unwrap();
        assert_eq!(r.diagnosis, "suggestive of a cyst");
        assert_eq!(r.image, "mllm_data/a.jpg");
        assert_eq!(r.record["source"], json!({"dataset": "x"}));
        assert_eq!(stratum(&r.answer), "ct / liver");
    }

    #[test]
    fn key_ignores_key_order_and_derived_keys_but_not_values() {
        let a = parse_source(sample(), DEFAULT_DIAGNOSIS_FIELD).unwrap();
        let mut v = sample();
        v["roi_coords"] = json!([0.1, 0.2, 0.3, 0.4]);
        v["target_diag"] = json!("suggestive of a cyst");
        let b = parse_source(v, DEFAULT_DIAGNOSIS_FIELD).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(b.given_box, Some([0.1, 0.2, 0.3, 0.4]));
        let c = parse_source(
            serde_json::from_str::<Value>(r#"{"images":["mllm_data/a.jpg"],"source":{"dataset":"x"},"messages":[{"content":"<image>What is shown?","role":"user"},{"role":"assistant","content":{"extractions":{"Organ":"Liver","Modality":"CT (axial)","Clinical Diagnosis Tips":"suggestive of a cyst","Extra":[1,2]}}}]}"#).unwrap(),
            DEFAULT_DIAGNOSIS_FIELD,
        )
        .unwrap();
        assert_eq!(a.key, c.key);
        let mut d = sample();
        d["source"]["dataset"] = json!("y");
        assert_ne!(a.key, parse_source(d, DEFAULT_DIAGNOSIS_FIELD).unwrap().key);
    }

    #[test]
    fn plain_text_answer_is_the_diagnosis() {
        let v = json!({"messages": [{"role": "user", "content": "<image>Findings?"}, {"role": "assistant", "content": "normal study"}], "images": ["b.png"]});
        let r = parse_source(v, DEFAULT_DIAGNOSIS_FIELD).unwrap();
        assert_eq!(r.diagnosis, "normal study");
        assert_eq!(stratum(&r.answer), "");
    }

    #[test]
    fn malformed_records_say_why() {
        let cases = [
            (json!(3), "missing field"),
            (json!({"messages": []}), "missing field"),
            (
                json!({"images": ["a.jpg"], "messages": [{"role": "user", "content": "q"}]}),
                "missing field",
            ),
            (
                json!({"images": ["a.jpg"], "messages": [{"role": "assistant", "content": {"extractions": {}}}]}),
                "no diagnosis field",
            ),
            (
                json!({"images": ["a.jpg"], "roi_coords": [0.5, 0.1, 0.2, 0.9], "messages": [{"role": "assistant", "content": "x"}]}),
                "invalid roi_coords",
            ),
            // No question: the trainer could not lay it out, so prepare refuses it.
            (
                json!({"images": ["a.jpg"], "messages": [{"role": "assistant", "content": "x"}]}),
                "missing field",
            ),
        ];
        for (value, code) in cases {
            let err = parse_source(value.clone(), DEFAULT_DIAGNOSIS_FIELD).unwrap_err();
            assert_eq!(err.code(), code, "{value}");
        }
    }

    #[test]
    fn with_fields_replaces_the_extractions_only() {
        let r = parse_source(sample(), DEFAULT_DIAGNOSIS_FIELD).unwrap();
        let mut fields = Map::new();
        fields.insert("Organ".into(), json!("Spleen"));
        let out = with_fields(&r.record, &fields);
        assert_eq!(
            out["messages"][1]["content"]["extractions"],
            json!({"Organ": "Spleen"})
        );
        assert_eq!(out["messages"][0], r.record["messages"][0]);
    }
}
