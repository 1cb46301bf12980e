//! Edits to records, each its own transaction, kept in a history that supports undo and redo.
//!
//! Every edit stores the state before and after as JSON, so undo writes `before` back and redo
//! writes `after`. The history is one stack per project: undo takes back the newest edit in
//! effect, redo re-applies the edit undone last, and a new edit drops what could be redone (the
//! rows stay, marked `dropped`, so nothing a person did disappears from the record).

use anyhow::{bail, Context};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{BoxSource, Project, ReviewStatus, Split};

/// One change to one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "edit")]
pub enum Edit {
    /// Sets (or with `None` removes) the box of one source, in normalised coordinates.
    SetBox {
        source: BoxSource,
        #[serde(rename = "box")]
        coords: Option<[f64; 4]>,
    },
    SetStatus {
        status: ReviewStatus,
    },
    /// Sets (or with `None` removes) one structured field; the diagnosis field also updates
    /// the diagnosis target.
    SetField {
        name: String,
        value: Option<Value>,
    },
    /// Sets the diagnosis target directly (records with a plain-text answer).
    SetDiagnosis {
        text: String,
    },
    SetSplit {
        split: Option<Split>,
    },
}

/// A history entry.
#[derive(Debug, Clone, Serialize)]
pub struct EditInfo {
    pub id: i64,
    pub record_id: i64,
    pub kind: String,
    pub target: String,
    pub before: Value,
    pub after: Value,
    pub who: String,
    pub at: String,
    pub state: String,
}

impl Edit {
    fn kind_target(&self) -> (&'static str, String) {
        match self {
            Edit::SetBox { source, .. } => ("box", source.as_str().into()),
            Edit::SetStatus { .. } => ("status", String::new()),
            Edit::SetField { name, .. } => ("field", name.clone()),
            Edit::SetDiagnosis { .. } => ("diagnosis", String::new()),
            Edit::SetSplit { .. } => ("split", String::new()),
        }
    }
}

impl Project {
    /// Applies `edit` to record `record_id` as `who`, in one transaction; returns the edit id.
    pub fn apply_edit(&mut self, record_id: i64, edit: &Edit, who: &str) -> anyhow::Result<i64> {
        let diagnosis_field = self.diagnosis_field().to_string();
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM records WHERE id = ?1",
            [record_id],
            |r| r.get(0),
        )?;
        if !exists {
            bail!("no record {record_id} in the project");
        }
        let diagnosis = match edit {
            Edit::SetDiagnosis { text } => Some(text.as_str()),
            Edit::SetField {
                name,
                value: Some(Value::String(text)),
            } if *name == diagnosis_field => Some(text.as_str()),
            _ => None,
        };
        if let Some(text) = diagnosis {
            crate::data::record::check_training_text("diagnosis", text)
                .map_err(|e| anyhow::anyhow!("record {record_id}: {e}; the edit is refused"))?;
        }
        let (kind, target) = edit.kind_target();
        let before = read_state(&tx, record_id, kind, &target)?;
        let now: String =
            tx.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
                r.get(0)
            })?;
        let after = match edit {
            Edit::SetBox { coords: None, .. } => Value::Null,
            Edit::SetBox {
                coords: Some(c), ..
            } => {
                crate::data::record::parse_box(&json!(c))
                    .map_err(|e| anyhow::anyhow!(e.detail()))?;
                json!({"box": c, "confidence": null, "who": who, "at": now})
            }
            Edit::SetStatus { status } => json!(status.as_str()),
            Edit::SetField { value, .. } => value.clone().unwrap_or(Value::Null),
            Edit::SetDiagnosis { text } => json!(text),
            Edit::SetSplit { split } => split.map_or(Value::Null, |s| json!(s.as_str())),
        };
        write_state(&tx, record_id, kind, &target, &after, &diagnosis_field)?;
        tx.execute(
            "UPDATE edits SET state = 'dropped' WHERE state = 'undone'",
            [],
        )?;
        tx.execute(
            "INSERT INTO edits(record_id, kind, target, before, after, who, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record_id,
                kind,
                target,
                before.to_string(),
                after.to_string(),
                who,
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// Takes back the newest edit in effect; `None` when there is nothing to undo.
    pub fn undo(&mut self) -> anyhow::Result<Option<EditInfo>> {
        self.step_history("done", "ORDER BY id DESC", "undone")
    }

    /// Re-applies the edit undone last; `None` when there is nothing to redo.
    pub fn redo(&mut self) -> anyhow::Result<Option<EditInfo>> {
        self.step_history("undone", "ORDER BY id ASC", "done")
    }

    fn step_history(
        &mut self,
        from: &str,
        order: &str,
        to: &str,
    ) -> anyhow::Result<Option<EditInfo>> {
        let diagnosis_field = self.diagnosis_field().to_string();
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = format!("{EDIT_COLUMNS} WHERE state = ?1 {order} LIMIT 1");
        let Some(mut info) = tx.query_row(&sql, [from], edit_info).optional()? else {
            return Ok(None);
        };
        let value = if to == "undone" {
            &info.before
        } else {
            &info.after
        };
        write_state(
            &tx,
            info.record_id,
            &info.kind,
            &info.target,
            value,
            &diagnosis_field,
        )?;
        tx.execute(
            "UPDATE edits SET state = ?1 WHERE id = ?2",
            params![to, info.id],
        )?;
        tx.commit()?;
        info.state = to.to_string();
        Ok(Some(info))
    }

    /// The history, oldest first; of one record when `record_id` is given.
    pub fn history(&self, record_id: Option<i64>) -> anyhow::Result<Vec<EditInfo>> {
        let sql = format!("{EDIT_COLUMNS} WHERE ?1 IS NULL OR record_id = ?1 ORDER BY id");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([record_id], edit_info)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const EDIT_COLUMNS: &str =
    "SELECT id, record_id, kind, target, before, after, who, at, state FROM edits";

fn edit_info(row: &rusqlite::Row) -> rusqlite::Result<EditInfo> {
    let json = |i: usize| -> rusqlite::Result<Value> {
        let text: Option<String> = row.get(i)?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null))
    };
    Ok(EditInfo {
        id: row.get(0)?,
        record_id: row.get(1)?,
        kind: row.get(2)?,
        target: row.get(3)?,
        before: json(4)?,
        after: json(5)?,
        who: row.get(6)?,
        at: row.get(7)?,
        state: row.get(8)?,
    })
}

/// The current value that an edit of `kind`/`target` replaces, as JSON.
fn read_state(tx: &Transaction, id: i64, kind: &str, target: &str) -> anyhow::Result<Value> {
    Ok(match kind {
        "box" => tx
            .query_row(
                "SELECT x0, y0, x1, y1, confidence, who, at FROM boxes \
                 WHERE record_id = ?1 AND source = ?2",
                params![id, target],
                |r| {
                    Ok(json!({
                        "box": [r.get::<_, f64>(0)?, r.get::<_, f64>(1)?,
                                r.get::<_, f64>(2)?, r.get::<_, f64>(3)?],
                        "confidence": r.get::<_, Option<f64>>(4)?,
                        "who": r.get::<_, String>(5)?,
                        "at": r.get::<_, String>(6)?,
                    }))
                },
            )
            .optional()?
            .unwrap_or(Value::Null),
        "status" | "split" | "diagnosis" => {
            let column = column_of(kind);
            let v: Option<String> = tx.query_row(
                &format!("SELECT {column} FROM records WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )?;
            v.map_or(Value::Null, Value::String)
        }
        "field" => fields(tx, id)?.get(target).cloned().unwrap_or(Value::Null),
        other => bail!("unknown edit kind {other}"),
    })
}

/// Writes a value read by [`read_state`] (or an edit's `after`) back.
fn write_state(
    tx: &Transaction,
    id: i64,
    kind: &str,
    target: &str,
    value: &Value,
    diagnosis_field: &str,
) -> anyhow::Result<()> {
    match kind {
        "box" => {
            if value.is_null() {
                tx.execute(
                    "DELETE FROM boxes WHERE record_id = ?1 AND source = ?2",
                    params![id, target],
                )?;
            } else {
                let c: [f64; 4] = serde_json::from_value(value["box"].clone())
                    .context("stored box is malformed")?;
                tx.execute(
                    "INSERT OR REPLACE INTO boxes(record_id, source, x0, y0, x1, y1, confidence, \
                     who, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        id,
                        target,
                        c[0],
                        c[1],
                        c[2],
                        c[3],
                        value["confidence"].as_f64(),
                        value["who"].as_str().unwrap_or(""),
                        value["at"].as_str().unwrap_or(""),
                    ],
                )?;
            }
        }
        "status" | "split" | "diagnosis" => {
            let text = value.as_str();
            if kind != "split" && text.is_none() {
                bail!("{kind} cannot be empty");
            }
            tx.execute(
                &format!("UPDATE records SET {} = ?1 WHERE id = ?2", column_of(kind)),
                params![text, id],
            )?;
        }
        "field" => {
            let mut f = fields(tx, id)?;
            if value.is_null() {
                f.shift_remove(target);
            } else {
                f.insert(target.to_string(), value.clone());
            }
            if target == diagnosis_field {
                match value.as_str() {
                    Some(d) if !d.trim().is_empty() => {
                        tx.execute(
                            "UPDATE records SET diagnosis = ?1 WHERE id = ?2",
                            params![d, id],
                        )?;
                    }
                    _ => bail!(
                        "the diagnosis field \"{diagnosis_field}\" must stay a non-empty text"
                    ),
                }
            }
            tx.execute(
                "UPDATE records SET fields = ?1 WHERE id = ?2",
                params![Value::Object(f).to_string(), id],
            )?;
        }
        other => bail!("unknown edit kind {other}"),
    }
    Ok(())
}

fn column_of(kind: &str) -> &'static str {
    match kind {
        "status" => "status",
        "split" => "split",
        _ => "diagnosis",
    }
}

fn fields(tx: &Transaction, id: i64) -> anyhow::Result<Map<String, Value>> {
    let text: Option<String> =
        tx.query_row("SELECT fields FROM records WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
    match text {
        None => bail!(
            "record {id} has a plain-text answer without structured fields; \
             edit its diagnosis instead"
        ),
        Some(t) => match serde_json::from_str(&t)? {
            Value::Object(o) => Ok(o),
            _ => bail!("record {id}: stored fields are not a JSON object"),
        },
    }
}
