//! The bundled sample project (`assets/sample`): real, redistributable medical images with green
//! ROI boxes drawn in, and seed-format records describing them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Where the sample project lives: `$ROISCOPE_SAMPLE_DIR`, else `share/roiscope/sample` next to
/// an installed binary, else the source checkout's `assets/sample`.
pub fn sample_dir() -> PathBuf {
    crate::assets::asset_path("ROISCOPE_SAMPLE_DIR", "sample", Some("raw_data.json"))
}

/// One record of a seed-format file, as far as the summary needs it.
#[derive(Debug, Clone)]
pub struct SampleRecord {
    pub image: String,
    pub question: String,
    /// The structured fields (`extractions`), in file order; empty for plain-text answers.
    pub fields: Vec<(String, String)>,
    /// The diagnosis target: the chosen field, or the whole answer when it is plain text.
    pub diagnosis: Option<String>,
}

/// Reads a seed-format (LLaMA-Factory "sharegpt") JSON array.
pub fn read_records(path: &Path, diagnosis_field: &str) -> anyhow::Result<Vec<SampleRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let items = value
        .as_array()
        .with_context(|| format!("{}: expected a JSON array of records", path.display()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_record(item, diagnosis_field)
                .with_context(|| format!("{}: record {}", path.display(), i + 1))
        })
        .collect()
}

fn parse_record(item: &Value, diagnosis_field: &str) -> anyhow::Result<SampleRecord> {
    let image = item["images"][0]
        .as_str()
        .context("missing \"images\"[0]")?
        .to_string();
    let messages = item["messages"]
        .as_array()
        .context("missing \"messages\"")?;
    let content_of = |role: &str| {
        messages
            .iter()
            .find(|m| m["role"] == role)
            .map(|m| &m["content"])
    };
    let question = content_of("user")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (fields, diagnosis) = match content_of("assistant") {
        Some(Value::String(s)) => (Vec::new(), Some(s.clone())),
        Some(Value::Object(o)) => {
            let extractions = o.get("extractions").and_then(Value::as_object);
            let fields: Vec<(String, String)> = extractions
                .map(|e| {
                    e.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let diagnosis = fields
                .iter()
                .find(|(k, _)| k == diagnosis_field)
                .map(|(_, v)| v.clone());
            (fields, diagnosis)
        }
        _ => (Vec::new(), None),
    };
    Ok(SampleRecord {
        image,
        question,
        fields,
        diagnosis,
    })
}
