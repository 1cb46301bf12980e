//! Model-assisted pre-annotation in the store: a run names the checkpoint and the records it
//! covers (in order), and each record it reaches gets one prediction row: the box, the match
//! score, the verdict with its reason, or the error that stopped it. A run is resumed by running
//! the records that have no row yet, so a cancelled or killed run loses at most the record in
//! flight. The predicted box is also written as the record's `predicted` box (outside the edit
//! history: it is the model's, not an annotator's edit), so the canvas and exports show it.

use anyhow::Context;
use rusqlite::params;
use serde::Serialize;

use super::Project;

/// What the model said about one record in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub run_id: i64,
    /// Normalised `[x0, y0, x1, y1]`; `None` when the record failed.
    #[serde(rename = "box")]
    pub coords: Option<[f64; 4]>,
    pub match_score: Option<f64>,
    pub threshold: Option<f64>,
    pub verified: bool,
    pub generated: Option<String>,
    /// The verdict with why ("unverified: match 0.41 < threshold 0.68"), or the error.
    pub verdict: String,
    pub error: Option<String>,
    pub at: String,
}

impl Prediction {
    /// A record the model ran on without an error.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.coords.is_some()
    }
}

/// One pre-annotation run and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreannotationRun {
    pub id: i64,
    pub model: String,
    pub checkpoint: String,
    /// What was asked for, in words ("12 filtered records", "split val").
    pub scope: String,
    pub record_ids: Vec<i64>,
    /// Records with a prediction row (errors included).
    pub done: usize,
    pub errors: usize,
    pub started_at: String,
}

impl PreannotationRun {
    pub fn pending(&self) -> usize {
        self.record_ids.len().saturating_sub(self.done)
    }
}

/// The columns [`prediction_from_row`] reads, in its order.
const PREDICTION_COLUMNS: &str = "run_id, x0, y0, x1, y1, match_score, threshold, verified, \
     generated, verdict, error, at";

fn prediction_from_row(r: &rusqlite::Row) -> rusqlite::Result<Prediction> {
    let coords: [Option<f64>; 4] = [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?];
    Ok(Prediction {
        run_id: r.get(0)?,
        coords: match coords {
            [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
            _ => None,
        },
        match_score: r.get(5)?,
        threshold: r.get(6)?,
        verified: r.get::<_, Option<bool>>(7)?.unwrap_or(false),
        generated: r.get(8)?,
        verdict: r.get(9)?,
        error: r.get(10)?,
        at: r.get(11)?,
    })
}

/// The query [`Latest`] walks: the predictions of the records a pass visits (`records`: a
/// condition on `r`, the records table, with the pass's ?1), by record id and newest run first.
pub(super) fn by_record_sql(records: &str) -> String {
    format!(
        "SELECT {PREDICTION_COLUMNS}, record_id FROM predictions WHERE record_id IN \
         (SELECT r.id FROM records r WHERE {records}) ORDER BY record_id, run_id DESC"
    )
}

/// The newest prediction of each record, for a pass over records in id order: one index scan
/// beside the records' own (a query per record doubled the time to read 160,000 of them).
pub(super) struct Latest<I: Iterator<Item = rusqlite::Result<(i64, Prediction)>>> {
    rows: std::iter::Peekable<I>,
}

/// A row of [`by_record_sql`]: the record's id and its prediction.
pub(super) fn row_by_record(r: &rusqlite::Row) -> rusqlite::Result<(i64, Prediction)> {
    Ok((r.get(12)?, prediction_from_row(r)?))
}

impl<I: Iterator<Item = rusqlite::Result<(i64, Prediction)>>> Latest<I> {
    pub(super) fn new(rows: I) -> Self {
        Latest {
            rows: rows.peekable(),
        }
    }

    /// The newest prediction of `record_id`; ids must come in increasing order.
    pub(super) fn take(&mut self, record_id: i64) -> anyhow::Result<Option<Prediction>> {
        let mut newest = None;
        while let Some(row) = self.rows.next_if(|row| match row {
            Ok((id, _)) => *id <= record_id,
            Err(_) => true,
        }) {
            let (id, p) = row?;
            // Newest run first: the first row of the record is the one.
            if id == record_id && newest.is_none() {
                newest = Some(p);
            }
        }
        Ok(newest)
    }
}

impl Project {
    /// Records a new pre-annotation run over `record_ids` (in that order); returns its id.
    pub fn start_preannotation(
        &mut self,
        model: &str,
        checkpoint: &str,
        scope: &str,
        record_ids: &[i64],
    ) -> anyhow::Result<i64> {
        anyhow::ensure!(!record_ids.is_empty(), "no records to pre-annotate");
        self.conn.execute(
            "INSERT INTO preannotation_runs(model, checkpoint, scope, record_ids) \
             VALUES (?1, ?2, ?3, ?4)",
            params![model, checkpoint, scope, serde_json::to_string(record_ids)?],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Every pre-annotation run, newest first, with how far each got.
    pub fn preannotation_runs(&self) -> anyhow::Result<Vec<PreannotationRun>> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, r.model, r.checkpoint, r.scope, r.record_ids, r.started_at, \
             (SELECT count(*) FROM predictions p WHERE p.run_id = r.id), \
             (SELECT count(*) FROM predictions p WHERE p.run_id = r.id AND p.error IS NOT NULL) \
             FROM preannotation_runs r ORDER BY r.id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut runs = Vec::new();
        for row in rows {
            let (id, model, checkpoint, scope, ids, started_at, done, errors) = row?;
            let record_ids: Vec<i64> = serde_json::from_str(&ids)
                .with_context(|| format!("pre-annotation run {id}: its record list is not JSON"))?;
            runs.push(PreannotationRun {
                id,
                model,
                checkpoint,
                scope,
                record_ids,
                done: done as usize,
                errors: errors as usize,
                started_at,
            });
        }
        Ok(runs)
    }

    /// One run by id.
    pub fn preannotation_run(&self, id: i64) -> anyhow::Result<PreannotationRun> {
        self.preannotation_runs()?
            .into_iter()
            .find(|r| r.id == id)
            .with_context(|| format!("no pre-annotation run {id} in this project"))
    }

    /// The run's records that have no prediction yet, in the run's order.
    pub fn pending_predictions(&self, run_id: i64) -> anyhow::Result<Vec<i64>> {
        let run = self.preannotation_run(run_id)?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT record_id FROM predictions WHERE run_id = ?1")?;
        let done: std::collections::HashSet<i64> = stmt
            .query_map([run_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(run
            .record_ids
            .into_iter()
            .filter(|id| !done.contains(id))
            .collect())
    }

    /// Stores what the model said about a record in one transaction: the prediction row and,
    /// when there is a box, the record's `predicted` box (confidence: the match score).
    pub fn store_prediction(&mut self, record_id: i64, p: &Prediction) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        let c = p.coords;
        tx.execute(
            "INSERT OR REPLACE INTO predictions(run_id, record_id, x0, y0, x1, y1, match_score, \
             threshold, verified, generated, verdict, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                p.run_id,
                record_id,
                c.map(|c| c[0]),
                c.map(|c| c[1]),
                c.map(|c| c[2]),
                c.map(|c| c[3]),
                p.match_score,
                p.threshold,
                p.error.is_none().then_some(p.verified),
                p.generated,
                p.verdict,
                p.error,
            ],
        )?;
        if let Some(c) = c {
            tx.execute(
                "INSERT OR REPLACE INTO boxes(record_id, source, x0, y0, x1, y1, confidence, who) \
                 VALUES (?1, 'predicted', ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    record_id,
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    p.match_score,
                    format!("pre-annotation run {}", p.run_id)
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(run_id: i64) -> Prediction {
        Prediction {
            run_id,
            coords: Some([0.1, 0.1, 0.5, 0.5]),
            match_score: Some(0.4),
            threshold: Some(0.5),
            verified: false,
            generated: Some("x".into()),
            verdict: "unverified: match 0.400 < threshold 0.50".into(),
            error: None,
            at: String::new(),
        }
    }

    #[test]
    fn each_record_gets_its_newest_runs_prediction_in_one_pass() {
        // By record id, newest run first, as the query orders them.
        let rows = vec![
            Ok((1, prediction(2))),
            Ok((1, prediction(1))),
            Ok((3, prediction(1))),
            Ok((5, prediction(4))),
        ];
        let mut latest = Latest::new(rows.into_iter());
        assert_eq!(latest.take(1).unwrap().map(|p| p.run_id), Some(2));
        assert_eq!(latest.take(2).unwrap(), None);
        assert_eq!(latest.take(3).unwrap().map(|p| p.run_id), Some(1));
        // Record 4 has none; 5's is not lost by asking for 4.
        assert_eq!(latest.take(4).unwrap(), None);
        assert_eq!(latest.take(5).unwrap().map(|p| p.run_id), Some(4));
        assert_eq!(latest.take(6).unwrap(), None);
    }
}
