//! Which records' diagnoses say different things: the match head's negatives in training and its
//! mismatched pairs in evaluation need a text that does *not* fit the image.
//!
//! Two different strings may say the same thing ("a simple cyst", "a thin-walled cyst"); a
//! negative built from such a pair is labelled "does not fit" while it fits, and an evaluation
//! that counts it as a mismatch caps the match AUC (at about 0.88 when a quarter of the other
//! records share the finding). A string alone cannot tell, but a project's structured fields
//! often can: a field that the diagnosis determines and that groups several diagnoses (a
//! "Finding" of four kinds under sixty wordings) names what the diagnosis says. Such a field is
//! looked for in the data, not by its name; where none is found the diagnosis text itself
//! (trimmed, case and spacing folded) is the meaning, as before.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

/// Share of records whose exact diagnosis another record also has, below which no field is
/// trusted to group diagnoses: with all-unique texts every field is trivially "determined by the
/// diagnosis" (a modality, say), and that says nothing about what the texts mean.
const MIN_REPEATED_SHARE: f64 = 0.2;

/// The diagnosis text as compared: trimmed, lower-cased, runs of white space made one space.
pub fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// How a project's records are grouped by what their diagnoses say.
#[derive(Debug, Clone, PartialEq)]
pub struct Meanings {
    /// The structured field that names what a diagnosis says, if the data has one.
    pub field: Option<String>,
}

impl Meanings {
    /// Looks at every record's `(diagnosis, structured fields)` for a field that (1) is a string
    /// in every record that has fields, (2) is the same wherever the diagnosis is the same, (3)
    /// has at least two values and fewer values than there are diagnoses, and (4) is not the
    /// diagnosis itself; and only when at least [`MIN_REPEATED_SHARE`] of the records share their
    /// diagnosis with another (so (2) was tested). Of several, the one with the most values (the
    /// finest grouping) wins, then the first by name.
    pub fn detect<'a>(
        records: impl IntoIterator<Item = (&'a str, Option<&'a Map<String, Value>>)>,
    ) -> Meanings {
        let mut diagnosis_count: HashMap<String, usize> = HashMap::new();
        // field -> diagnosis -> values seen with it
        let mut by_field: HashMap<String, HashMap<String, BTreeSet<String>>> = HashMap::new();
        let mut disqualified: BTreeSet<String> = BTreeSet::new();
        let mut total = 0usize;
        let mut with_fields = 0usize;
        let mut seen_fields: HashMap<String, usize> = HashMap::new();
        for (diagnosis, fields) in records {
            total += 1;
            let d = normalise(diagnosis);
            *diagnosis_count.entry(d.clone()).or_default() += 1;
            let Some(fields) = fields else { continue };
            with_fields += 1;
            for (name, value) in fields {
                *seen_fields.entry(name.clone()).or_default() += 1;
                let Some(text) = value.as_str() else {
                    disqualified.insert(name.clone());
                    continue;
                };
                let v = normalise(text);
                if v.is_empty() || v == d {
                    disqualified.insert(name.clone());
                    continue;
                }
                by_field
                    .entry(name.clone())
                    .or_default()
                    .entry(d.clone())
                    .or_default()
                    .insert(v);
            }
        }
        let none = Meanings { field: None };
        if total == 0 || with_fields == 0 {
            return none;
        }
        let repeated: usize = diagnosis_count.values().filter(|&&n| n > 1).sum();
        if (repeated as f64) < MIN_REPEATED_SHARE * total as f64 {
            return none;
        }
        let diagnoses = diagnosis_count.len();
        let mut best: Option<(usize, String)> = None;
        let mut names: Vec<&String> = by_field.keys().collect();
        names.sort();
        for name in names {
            if disqualified.contains(name) || seen_fields[name] != with_fields {
                continue;
            }
            let groups = &by_field[name];
            if groups.values().any(|values| values.len() != 1) {
                continue;
            }
            let values: BTreeSet<&String> = groups.values().flatten().collect();
            if values.len() < 2 || values.len() >= diagnoses {
                continue;
            }
            if best.as_ref().is_none_or(|(n, _)| values.len() > *n) {
                best = Some((values.len(), name.clone()));
            }
        }
        Meanings {
            field: best.map(|(_, name)| name),
        }
    }

    /// What a record's diagnosis says, as a key: equal keys say the same thing.
    pub fn key(&self, diagnosis: &str, fields: Option<&Map<String, Value>>) -> String {
        if let (Some(name), Some(fields)) = (&self.field, fields) {
            if let Some(v) = fields.get(name).and_then(Value::as_str) {
                return format!("{name}={}", normalise(v));
            }
        }
        normalise(diagnosis)
    }

    /// One line for reports: how mismatched texts are chosen.
    pub fn describe(&self) -> String {
        match &self.field {
            Some(name) => format!(
                "a mismatched text is another record's whose field \"{name}\" differs \
                 (the diagnosis determines that field in this project)"
            ),
            None => "a mismatched text is another record's with a different diagnosis text \
                     (no structured field groups the diagnoses in this project)"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// A field that many wordings share and that the wording determines is found; one that
    /// varies under the same wording (the organ behind it) and the diagnosis field are not.
    #[test]
    fn a_field_the_diagnosis_determines_is_found() {
        let rows = [
            ("A simple cyst.", "cyst", "Head"),
            ("A simple cyst.", "cyst", "Chest"),
            ("Thin-walled cyst.", "cyst", "Chest"),
            ("A solid nodule.", "nodule", "Head"),
            ("A solid nodule.", "nodule", "Abdomen"),
            ("Nodular opacity.", "nodule", "Head"),
        ];
        let maps: Vec<(String, Map<String, Value>)> = rows
            .iter()
            .map(|(d, kind, organ)| {
                (
                    d.to_string(),
                    fields(json!({"Organ": organ, "Finding": kind, "Tips": d, "Size": 3})),
                )
            })
            .collect();
        let m = Meanings::detect(maps.iter().map(|(d, f)| (d.as_str(), Some(f))));
        assert_eq!(m.field.as_deref(), Some("Finding"));
        assert_eq!(
            m.key("A simple cyst.", Some(&maps[2].1)),
            m.key("x", Some(&maps[1].1))
        );
        assert_ne!(m.key("", Some(&maps[0].1)), m.key("", Some(&maps[3].1)));
    }

    /// All-unique diagnoses prove nothing about any field: the text is the meaning.
    #[test]
    fn unique_texts_fall_back_to_the_text() {
        let maps: Vec<(String, Map<String, Value>)> = (0..10)
            .map(|i| {
                (
                    format!("Diagnosis number {i}."),
                    fields(json!({"Modality": if i % 2 == 0 { "CT" } else { "MRI" }})),
                )
            })
            .collect();
        let m = Meanings::detect(maps.iter().map(|(d, f)| (d.as_str(), Some(f))));
        assert_eq!(m.field, None);
        assert_eq!(
            m.key("  Diagnosis   Number 1. ", None),
            "diagnosis number 1."
        );
        assert!(m.describe().contains("different diagnosis text"));
    }

    /// Plain-text answers (no fields) are compared by their text.
    #[test]
    fn plain_text_answers_use_the_text() {
        let m = Meanings::detect([("a", None), ("a", None), ("b", None)]);
        assert_eq!(m.field, None);
    }
}
