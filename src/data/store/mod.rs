//! The project store: one folder with a SQLite database (`roiscope.db`), a cache of marker-free
//! images and the last prepare report. The GUI, the trainer and the command line all open it
//! through [`Project`].
//!
//! Durability: WAL journal with `synchronous = FULL`, and every edit is one transaction, so a
//! crash or `kill -9` loses at most the edit in flight. Several processes may open one project;
//! writers wait for each other (busy timeout) and readers see a consistent snapshot.

pub mod edits;
pub mod predictions;
pub mod schema;
pub mod splits;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use edits::{Edit, EditInfo};
pub use predictions::{PreannotationRun, Prediction};
pub use splits::SplitRatios;

/// The database file inside a project folder.
pub const DB_FILE: &str = "roiscope.db";
/// The folder of marker-free images inside a project folder.
pub const CACHE_DIR: &str = "cache";

/// Where a box came from.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BoxSource {
    /// Found by the green-ROI detector in the drawn outline.
    Detected,
    /// Drawn or fixed by a person (or given by an imported file).
    Corrected,
    /// Predicted by the model's ROI head.
    Predicted,
}

impl BoxSource {
    pub const ALL: [BoxSource; 3] = [
        BoxSource::Detected,
        BoxSource::Corrected,
        BoxSource::Predicted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BoxSource::Detected => "detected",
            BoxSource::Corrected => "corrected",
            BoxSource::Predicted => "predicted",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// The review state of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewStatus {
    Unreviewed,
    Accepted,
    Rejected,
    NeedsFix,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 4] = [
        ReviewStatus::Unreviewed,
        ReviewStatus::Accepted,
        ReviewStatus::Rejected,
        ReviewStatus::NeedsFix,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Unreviewed => "unreviewed",
            ReviewStatus::Accepted => "accepted",
            ReviewStatus::Rejected => "rejected",
            ReviewStatus::NeedsFix => "needs-fix",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// A box on a record: normalised `[x0, y0, x1, y1]` with who set it and when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredBox {
    pub source: BoxSource,
    #[serde(rename = "box")]
    pub coords: [f64; 4],
    pub confidence: Option<f64>,
    pub who: String,
    pub at: String,
}

/// One record as the project holds it now.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub id: i64,
    pub key: String,
    pub source_index: i64,
    /// Relative to the data root.
    pub image: String,
    pub width: u32,
    pub height: u32,
    /// The input object (derived keys removed), with the original structured fields.
    pub record: Map<String, Value>,
    /// The current structured fields (after edits); `None` for plain-text answers.
    pub fields: Option<Map<String, Value>>,
    pub diagnosis: String,
    pub status: ReviewStatus,
    pub split: Option<Split>,
    pub stratum: String,
    /// The marker-free copy, relative to the project folder, when the image had a box removed
    /// or needed rendering (DICOM).
    pub cache_image: Option<String>,
    pub created_at: String,
    /// Boxes by source, in [`BoxSource::ALL`] order.
    pub boxes: Vec<StoredBox>,
    /// What the newest pre-annotation run that reached this record said about it.
    pub prediction: Option<Prediction>,
}

impl StoredRecord {
    pub fn get_box(&self, source: BoxSource) -> Option<&StoredBox> {
        self.boxes.iter().find(|b| b.source == source)
    }
    /// The box a trainer should use: the corrected one when there is one, else the detected.
    pub fn ground_truth(&self) -> Option<&StoredBox> {
        self.get_box(BoxSource::Corrected)
            .or_else(|| self.get_box(BoxSource::Detected))
    }
}

/// An open project.
pub struct Project {
    dir: PathBuf,
    conn: Connection,
    data_root: PathBuf,
    diagnosis_field: String,
}

impl Project {
    /// Opens an existing project (migrating an older schema).
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            bail!(
                "{} is not a roiscope project (no {DB_FILE}); create one with `roiscope prepare`",
                dir.display()
            );
        }
        let conn = connect(&db)?;
        Self::from_conn(dir, conn)
    }

    /// Opens the project in `dir`, creating it for `data_root` if there is none. An existing
    /// project must have the same data root and diagnosis field.
    pub fn open_or_create(
        dir: &Path,
        data_root: &Path,
        diagnosis_field: &str,
    ) -> anyhow::Result<Project> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create project folder {}", dir.display()))?;
        let data_root = data_root
            .canonicalize()
            .with_context(|| format!("image folder {} cannot be opened", data_root.display()))?;
        let conn = connect(&dir.join(DB_FILE))?;
        let root_text = data_root.to_string_lossy().into_owned();
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('data_root', ?1), \
             ('diagnosis_field', ?2)",
            params![root_text, diagnosis_field],
        )?;
        let project = Self::from_conn(dir, conn)?;
        if project.data_root != data_root {
            bail!(
                "project {} was prepared with images from {}, not {}; use a new project folder",
                dir.display(),
                project.data_root.display(),
                data_root.display()
            );
        }
        if project.diagnosis_field != diagnosis_field {
            bail!(
                "project {} uses the diagnosis field \"{}\", not \"{}\"",
                dir.display(),
                project.diagnosis_field,
                diagnosis_field
            );
        }
        Ok(project)
    }

    fn from_conn(dir: &Path, conn: Connection) -> anyhow::Result<Project> {
        let meta = |key: &str| -> anyhow::Result<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?
                .with_context(|| format!("project database has no {key}"))
        };
        let data_root = PathBuf::from(meta("data_root")?);
        let diagnosis_field = meta("diagnosis_field")?;
        Ok(Project {
            dir: dir.to_path_buf(),
            conn,
            data_root,
            diagnosis_field,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }
    pub fn diagnosis_field(&self) -> &str {
        &self.diagnosis_field
    }
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The absolute path of a record's original image.
    pub fn image_path(&self, record: &StoredRecord) -> PathBuf {
        self.data_root.join(&record.image)
    }

    /// The image a model should see: the marker-free copy when there is one, else the original.
    pub fn training_image_path(&self, record: &StoredRecord) -> PathBuf {
        match &record.cache_image {
            Some(c) => self.dir.join(c),
            None => self.image_path(record),
        }
    }

    pub fn record_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))?)
    }

    /// The id of the record with this content key, if the project has it.
    pub fn find_key(&self, key: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM records WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// One record with its boxes.
    pub fn record(&self, id: i64) -> anyhow::Result<StoredRecord> {
        let mut found = None;
        self.for_each_record(RecordFilter::Id(id), |r| {
            found = Some(r);
            Ok(())
        })?;
        found.with_context(|| format!("no record {id} in the project"))
    }

    /// Calls `f` on every record matching `filter` in id order, inside one read transaction,
    /// so the whole pass sees one consistent state even while another process writes. Memory
    /// stays at one record.
    pub fn for_each_record(
        &self,
        filter: RecordFilter,
        mut f: impl FnMut(StoredRecord) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        use rusqlite::types::Value as SqlValue;
        let (clause, arg) = match filter {
            RecordFilter::All => ("?1 IS NULL", SqlValue::Null),
            RecordFilter::Split(s) => ("r.split = ?1", SqlValue::Text(s.as_str().into())),
            RecordFilter::Id(id) => ("r.id = ?1", SqlValue::Integer(id)),
        };
        let sql = format!(
            "SELECT r.id, r.key, r.source_index, r.image, r.width, r.height, r.record, r.fields, \
             r.diagnosis, r.status, r.split, r.stratum, r.cache_image, r.created_at \
             FROM records r WHERE {clause} ORDER BY r.id"
        );
        let mut boxes_stmt = tx.prepare(
            "SELECT source, x0, y0, x1, y1, confidence, who, at FROM boxes WHERE record_id = ?1",
        )?;
        let mut predictions_stmt = tx.prepare(&predictions::by_record_sql(clause))?;
        let mut latest = predictions::Latest::new(
            predictions_stmt.query_map([arg.clone()], predictions::row_by_record)?,
        );
        let mut stmt = tx.prepare(&sql)?;
        let mut rows = stmt.query([arg])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let record_text: String = row.get(6)?;
            let fields_text: Option<String> = row.get(7)?;
            let status: String = row.get(9)?;
            let split: Option<String> = row.get(10)?;
            let mut boxes: Vec<StoredBox> = boxes_stmt
                .query_map([id], |b| {
                    Ok((
                        b.get::<_, String>(0)?,
                        [b.get(1)?, b.get(2)?, b.get(3)?, b.get(4)?],
                        b.get(5)?,
                        b.get(6)?,
                        b.get(7)?,
                    ))
                })?
                .filter_map(|b| match b {
                    Ok((s, coords, confidence, who, at)) => Some(Ok(StoredBox {
                        source: BoxSource::parse(&s)?,
                        coords,
                        confidence,
                        who,
                        at,
                    })),
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            boxes.sort_by_key(|b| b.source);
            let record = StoredRecord {
                id,
                key: row.get(1)?,
                source_index: row.get(2)?,
                image: row.get(3)?,
                width: row.get(4)?,
                height: row.get(5)?,
                record: parse_object(&record_text)
                    .with_context(|| format!("record {id}: stored record is not JSON"))?,
                fields: fields_text
                    .map(|t| parse_object(&t))
                    .transpose()
                    .with_context(|| format!("record {id}: stored fields are not JSON"))?,
                diagnosis: row.get(8)?,
                status: ReviewStatus::parse(&status)
                    .with_context(|| format!("record {id}: unknown status {status}"))?,
                split: split.as_deref().and_then(Split::parse),
                stratum: row.get(11)?,
                cache_image: row.get(12)?,
                created_at: row.get(13)?,
                boxes,
                prediction: latest.take(id)?,
            };
            f(record)?;
        }
        Ok(())
    }

    /// Counts for `project info`.
    pub fn summary(&self) -> anyhow::Result<Summary> {
        let tx = self.conn.unchecked_transaction()?;
        let count_by = |sql: &str| -> anyhow::Result<Vec<(String, i64)>> {
            let mut stmt = tx.prepare(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let records: i64 = tx.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
        let by_status = count_by("SELECT status, count(*) FROM records GROUP BY status")?;
        let by_split =
            count_by("SELECT coalesce(split, 'unassigned'), count(*) FROM records GROUP BY split")?;
        let by_box_source =
            count_by("SELECT source, count(*) FROM boxes GROUP BY source ORDER BY source")?;
        let without_box: i64 = tx.query_row(
            "SELECT count(*) FROM records r WHERE NOT EXISTS (SELECT 1 FROM boxes b \
             WHERE b.record_id = r.id AND b.source IN ('detected', 'corrected'))",
            [],
            |r| r.get(0),
        )?;
        let edits: i64 =
            tx.query_row("SELECT count(*) FROM edits WHERE state = 'done'", [], |r| {
                r.get(0)
            })?;
        let last_run: Option<(i64, String, Option<String>)> = tx
            .query_row(
                "SELECT id, input, finished_at FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let skipped = match &last_run {
            Some((run, _, _)) => {
                let mut stmt = tx.prepare(
                    "SELECT reason, count(*) FROM skipped WHERE run_id = ?1 GROUP BY reason \
                     ORDER BY count(*) DESC, reason",
                )?;
                let rows = stmt.query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        };
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(Summary {
            project: self.dir.display().to_string(),
            data_root: self.data_root.display().to_string(),
            diagnosis_field: self.diagnosis_field.clone(),
            schema_version: version,
            records,
            by_status: order_like(by_status, ReviewStatus::ALL.map(ReviewStatus::as_str)),
            by_split: order_like(by_split, ["train", "val", "test", "unassigned"]),
            by_box_source,
            without_box,
            edits,
            last_prepare: last_run.map(|(id, input, finished)| LastRun {
                id,
                input,
                finished: finished.is_some(),
                skipped,
            }),
        })
    }
}

/// Which records [`Project::for_each_record`] visits.
#[derive(Debug, Clone, Copy)]
pub enum RecordFilter {
    All,
    Split(Split),
    Id(i64),
}

/// What `project info` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub project: String,
    pub data_root: String,
    pub diagnosis_field: String,
    pub schema_version: i64,
    pub records: i64,
    pub by_status: Vec<(String, i64)>,
    pub by_split: Vec<(String, i64)>,
    pub by_box_source: Vec<(String, i64)>,
    /// Records with neither a detected nor a corrected box.
    pub without_box: i64,
    /// Edits in the history that are in effect (not undone).
    pub edits: i64,
    pub last_prepare: Option<LastRun>,
}

#[derive(Debug, Serialize)]
pub struct LastRun {
    pub id: i64,
    pub input: String,
    pub finished: bool,
    /// Skipped records by reason, most frequent first.
    pub skipped: Vec<(String, i64)>,
}

/// Every name of `order` with its count (0 when absent), then any others.
fn order_like<const N: usize>(counts: Vec<(String, i64)>, order: [&str; N]) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = order
        .iter()
        .map(|name| {
            let n = counts
                .iter()
                .find(|(k, _)| k == name)
                .map_or(0, |(_, n)| *n);
            (name.to_string(), n)
        })
        .collect();
    out.extend(
        counts
            .into_iter()
            .filter(|(k, _)| !order.contains(&k.as_str())),
    );
    out
}

fn parse_object(text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str(text)? {
        Value::Object(o) => Ok(o),
        _ => bail!("not a JSON object"),
    }
}

/// Opens the database with the project's durability settings and brings its schema up to date.
fn connect(db: &Path) -> anyhow::Result<Connection> {
    let mut conn = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    schema::migrate(&mut conn).with_context(|| format!("{}", db.display()))?;
    Ok(conn)
}

/// Resolves a record's image path against the data root without leaving it.
///
/// Relative paths are joined to the root; absolute paths must lie inside it. `.` is dropped and
/// `..` pops a component, and a path that would climb above the root is refused. Returns the
/// normalised relative path.
pub fn relative_image_path(data_root: &Path, image: &str) -> Result<String, String> {
    let path = Path::new(image);
    let rel: PathBuf = if path.is_absolute() {
        match path.strip_prefix(data_root) {
            Ok(r) => r.to_path_buf(),
            Err(_) => return Err(image.to_string()),
        }
    } else {
        path.to_path_buf()
    };
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(image.to_string());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(image.to_string()),
        }
    }
    if parts.is_empty() {
        return Err(image.to_string());
    }
    let joined: PathBuf = parts.iter().collect();
    Ok(joined.to_string_lossy().replace('\\', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_stay_inside_the_root() {
        let root = Path::new("/data/root");
        assert_eq!(relative_image_path(root, "a/b.jpg").unwrap(), "a/b.jpg");
        assert_eq!(relative_image_path(root, "./a/../b.jpg").unwrap(), "b.jpg");
        assert_eq!(
            relative_image_path(root, "/data/root/x/y.png").unwrap(),
            "x/y.png"
        );
        for bad in [
            "../b.jpg",
            "a/../../b.jpg",
            "/etc/passwd",
            "/data/rootx/a.jpg",
            ".",
            "",
        ] {
            assert!(relative_image_path(root, bad).is_err(), "{bad}");
        }
    }
}
