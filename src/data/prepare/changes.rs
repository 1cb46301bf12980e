//! Records that a re-run of `prepare` finds already in the project (same content key) but with
//! another `roi_coords` or `target_diag` than the project holds. Those two keys are derived
//! (left out of the key), so a corrected input would otherwise be skipped as "already in
//! project" without a word: they are reported, and applied as edits when asked.

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::data::record::SourceRecord;
use crate::data::store::edits::Edit;
use crate::data::store::{BoxSource, Project};

/// What the input says differently about a record the project has.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// 0-based position in the input.
    pub index: usize,
    pub record_id: i64,
    pub image: String,
    /// The input's box and the project's ground truth (corrected, else detected).
    pub roi: Option<([f64; 4], Option<[f64; 4]>)>,
    /// The input's `target_diag` and the project's diagnosis.
    pub diagnosis: Option<(String, String)>,
}

/// A change as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeLine {
    /// 1-based position in the input.
    pub record: usize,
    pub id: i64,
    pub image: String,
    pub detail: String,
}

/// What the project knows of an input record.
pub enum Lookup {
    New,
    Same,
    Changed(Box<Change>),
}

impl Change {
    pub fn line(&self) -> ChangeLine {
        let mut parts = Vec::new();
        if let Some((given, had)) = &self.roi {
            let had = had.map_or_else(|| "no box".to_string(), |b| format!("{b:?}"));
            parts.push(format!("roi_coords {given:?}, project {had}"));
        }
        if let Some((given, had)) = &self.diagnosis {
            parts.push(format!("target_diag {given:?}, project {had:?}"));
        }
        ChangeLine {
            record: self.index + 1,
            id: self.record_id,
            image: self.image.clone(),
            detail: parts.join("; "),
        }
    }

    /// The edits that make the project say what the input says.
    pub fn edits(&self) -> Vec<Edit> {
        let mut out = Vec::new();
        if let Some((given, _)) = self.roi {
            out.push(Edit::SetBox {
                source: BoxSource::Corrected,
                coords: Some(given),
            });
        }
        if let Some((given, _)) = &self.diagnosis {
            out.push(Edit::SetDiagnosis {
                text: given.clone(),
            });
        }
        out
    }

    /// Applies the change as edits (each in the edit history, undoable) by `who`.
    pub fn apply(&self, project: &mut Project, who: &str) -> anyhow::Result<()> {
        for edit in self.edits() {
            project.apply_edit(self.record_id, &edit, who)?;
        }
        Ok(())
    }
}

/// Looks `record` up by its content key and compares what the input gives (`roi_coords`,
/// `target_diag`) with the project; boxes within `same_px` pixels on every side are the same.
pub fn compare(
    reader: &Connection,
    record: &SourceRecord,
    index: usize,
    same_px: f64,
) -> rusqlite::Result<Lookup> {
    let found = reader
        .prepare_cached("SELECT id, image, width, height, diagnosis FROM records WHERE key = ?1")?
        .query_row([&record.key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .optional()?;
    let Some((id, image, width, height, diagnosis)) = found else {
        return Ok(Lookup::New);
    };
    let mut change = Change {
        index,
        record_id: id,
        image,
        roi: None,
        diagnosis: None,
    };
    if let Some(given) = record.given_box {
        let mut truth = None;
        for source in [BoxSource::Corrected, BoxSource::Detected] {
            truth = reader
                .prepare_cached(
                    "SELECT x0, y0, x1, y1 FROM boxes WHERE record_id = ?1 AND source = ?2",
                )?
                .query_row(rusqlite::params![id, source.as_str()], |r| {
                    Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?])
                })
                .optional()?;
            if truth.is_some() {
                break;
            }
        }
        let scale = [width, height, width, height].map(f64::from);
        let same = truth.is_some_and(|t: [f64; 4]| {
            (0..4).all(|i| ((t[i] - given[i]) * scale[i]).abs() <= same_px)
        });
        if !same {
            change.roi = Some((given, truth));
        }
    }
    if record.diagnosis_given && record.diagnosis != diagnosis {
        change.diagnosis = Some((record.diagnosis.clone(), diagnosis));
    }
    Ok(if change.roi.is_none() && change.diagnosis.is_none() {
        Lookup::Same
    } else {
        Lookup::Changed(Box::new(change))
    })
}
