//! LLaMA-Factory's "sharegpt" layout: every message content a string (its `datasets` loader
//! cannot mix an object answer with string questions, and its formatter takes strings), one
//! `<image>` per image, and an entry in `dataset_info.json` that tells it the column and tag
//! names.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::data::files::write_atomic;
use crate::data::store::StoredRecord;

/// What the assistant answers in a LLaMA-Factory export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AnswerText {
    /// The diagnosis target (`target_diag`), what `roiscope train` teaches the model to say.
    #[default]
    Diagnosis,
    /// The structured fields as compact JSON text, `{"extractions": {...}}` (the seed's answer
    /// written as a string); a record with a plain-text answer gives its diagnosis.
    Fields,
}

/// The user question of a record, with `<image>` in front when it has none (roiscope puts the
/// image first then, and LLaMA-Factory needs one `<image>` per image). `None` when the record
/// has no user message with text content.
pub fn question(record: &Map<String, Value>) -> Option<String> {
    let q = record
        .get("messages")?
        .as_array()?
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?
        .get("content")?
        .as_str()?;
    Some(if q.contains("<image>") {
        q.to_string()
    } else {
        format!("<image>{q}")
    })
}

/// One record in LLaMA-Factory's sharegpt layout; `None` (left out) when it has no question or
/// more than one `<image>` (one image per record).
pub fn record(r: &StoredRecord, answer: AnswerText, image: &str) -> Option<Value> {
    let q = question(&r.record)?;
    if q.matches("<image>").count() != 1 {
        return None;
    }
    let a = match (answer, &r.fields) {
        (AnswerText::Fields, Some(fields)) => json!({ "extractions": fields }).to_string(),
        _ => r.diagnosis.clone(),
    };
    Some(json!({
        "messages": [
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ],
        "images": [image],
    }))
}

/// The entries of `dataset_info.json` in `dir` (none when there is no such file); an error
/// when the file is there but is not a JSON object, before anything is written.
pub fn read_dataset_info(dir: &Path) -> anyhow::Result<Map<String, Value>> {
    let path = dir.join("dataset_info.json");
    Ok(match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str(text.trim_start_matches('\u{feff}')) {
            Ok(Value::Object(o)) => o,
            Ok(_) => bail!(
                "{} is not a JSON object; move it away or export to another folder",
                path.display()
            ),
            Err(e) => bail!(
                "{} is not valid JSON ({e}); move it away or export to another folder",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    })
}

/// Adds (or replaces) the entry `name` for the export file `file_name` to `info` (read by
/// [`read_dataset_info`]) and writes it as `dataset_info.json` in `dir`.
pub fn write_dataset_info(
    dir: &Path,
    mut info: Map<String, Value>,
    name: &str,
    file_name: &str,
) -> anyhow::Result<()> {
    let path = dir.join("dataset_info.json");
    info.insert(
        name.to_string(),
        json!({
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }),
    );
    let mut text = serde_json::to_string_pretty(&Value::Object(info))?;
    text.push('\n');
    write_atomic(&path, text.as_bytes())
}
