//! `prepare`: importing seed-format records into a project, with ROI detection and marker
//! removal.
//!
//! The input is streamed: one thread parses records, a pool of workers decodes images, detects
//! the green ROI and writes marker-free copies into the project's cache, and the calling thread
//! commits results in input order, a batch per transaction. A kill at any moment loses at most
//! the uncommitted batch; running `prepare` again skips every record already in the project
//! (by content key) and redoes the rest, so nothing is duplicated.

pub mod changes;
pub mod input;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;

use super::dicom::is_dicom;
use super::files::{not_regular, save_png_atomic, write_atomic};
use super::image_io::{decode_rgb8, JpegDecoder, LoadOptions};
use super::marker::remove_outlines;
use super::record::{parse_source, stratum, Answer, SkipReason, SourceRecord};
use super::roi::{detect, DetectMode};
use super::store::{
    relative_image_path, BoxSource, Project, ReviewStatus, Split, SplitRatios, CACHE_DIR, DB_FILE,
};
use crate::parallel::ordered_map_iter;

/// What to prepare and how.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// A JSON array of records or JSON lines.
    pub input: PathBuf,
    /// The data root: record image paths are relative to it.
    pub images: PathBuf,
    pub project: PathBuf,
    pub diagnosis_field: String,
    pub threads: usize,
    /// Skip records whose image has no green box (as the seed did) instead of keeping them
    /// marked `needs-fix`.
    pub skip_unboxed: bool,
    pub ratios: SplitRatios,
    pub max_pixels: u64,
    /// Records already in the project whose `roi_coords` or `target_diag` differ in the input:
    /// apply them as edits (else they are only reported).
    pub apply_changes: bool,
    /// Refuse images whose real location (after symbolic links inside the data root) is
    /// outside it; by default links are followed (paths in records may still not leave the root
    /// lexically).
    pub stay_in_root: bool,
}

/// Where a run is, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub kept: usize,
    pub skipped: usize,
}

/// The outcome of a run, also stored in the project (`runs.report`, `prepare-report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub run_id: i64,
    pub input: String,
    pub project: String,
    pub records_in_input: usize,
    /// Records added to the project by this run.
    pub kept: usize,
    /// Of those, records whose image had no green box (kept as `needs-fix`).
    pub kept_without_box: usize,
    /// Records that an earlier run had already prepared.
    pub already_in_project: usize,
    /// Of those, records whose `roi_coords` or `target_diag` in the input differ from the
    /// project's, the first few of them, and how many were applied (`apply_changes`).
    pub changed: usize,
    pub changed_examples: Vec<changes::ChangeLine>,
    pub changes_applied: usize,
    pub skipped: usize,
    pub skipped_by_reason: Vec<ReasonGroup>,
    pub splits_assigned: usize,
    pub seconds: f64,
}

/// Skipped records sharing one reason.
#[derive(Debug, Clone, Serialize)]
pub struct ReasonGroup {
    pub reason: String,
    pub count: usize,
    /// The first few, for the report; the project holds all of them (`skipped` table).
    pub examples: Vec<SkipLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkipLine {
    /// 1-based position in the input.
    pub record: usize,
    pub image: Option<String>,
    pub detail: String,
}

/// How many examples per reason the report lists.
const EXAMPLES_PER_REASON: usize = 5;
/// Results are committed at least this often...
const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// ...and in batches of at most this many records.
const BATCH: usize = 256;
/// Box coordinates closer than this many pixels count as the same box.
const SAME_BOX_PX: f64 = 1.5;

/// What the sequential stage decided about one input element.
enum Job {
    Skip {
        index: usize,
        image: Option<String>,
        reason: SkipReason,
    },
    Already,
    Changed(Box<changes::Change>),
    Work {
        index: usize,
        record: Box<SourceRecord>,
        image: String,
    },
}

/// What the workers made of one job.
enum Outcome {
    Skip {
        index: usize,
        image: Option<String>,
        reason: SkipReason,
    },
    Already,
    Changed(Box<changes::Change>),
    Kept(Box<Prepared>),
    /// A failure of the project itself (the cache cannot be written): the run stops.
    Fatal(anyhow::Error),
}

struct Prepared {
    index: usize,
    record: SourceRecord,
    image: String,
    width: u32,
    height: u32,
    /// The primary detected box, normalised, with its confidence.
    detected: Option<([f64; 4], Option<f64>)>,
    cache_image: Option<String>,
}

/// Runs `prepare`; `progress` is called on the calling thread after every record.
pub fn prepare(
    opts: &PrepareOptions,
    progress: &mut dyn FnMut(&Progress),
) -> anyhow::Result<PrepareReport> {
    let started = Instant::now();
    let (format, total) = input::check(&opts.input)?;
    let mut project = Project::open_or_create(&opts.project, &opts.images, &opts.diagnosis_field)?;
    // One prepare per project at a time (the lock goes with the process, even on kill -9).
    let lock_path = project.dir().join("prepare.lock");
    let _lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if let Err(e) = _lock.try_lock() {
        anyhow::bail!(
            "another `roiscope prepare` is running on {} ({e})",
            project.dir().display()
        );
    }
    let input_name = opts.input.display().to_string();
    project
        .conn()
        .execute("INSERT INTO runs(input) VALUES (?1)", [&input_name])?;
    let run_id = project.conn().last_insert_rowid();
    let reader = read_only(&project.dir().join(DB_FILE))?;
    let data_root = project.data_root().to_path_buf();
    // The project keeps its data root canonical; workers resolve image paths against it.
    let image_root = data_root.clone();
    let project_dir = project.dir().to_path_buf();
    let mut writer = BatchWriter {
        run_id,
        who: format!("roiscope {} prepare", env!("CARGO_PKG_VERSION")),
        import_who: format!(
            "import: {}",
            opts.input
                .file_name()
                .map_or_else(|| input_name.clone(), |n| n.to_string_lossy().into_owned())
        ),
        tally: Tally::default(),
    };

    let mut state = Progress {
        total,
        ..Progress::default()
    };
    let mut batch: Vec<Outcome> = Vec::with_capacity(BATCH);
    let mut last_commit = Instant::now();
    let mut fatal: Option<anyhow::Error> = None;
    // Set on a fatal error so the workers stop taking records.
    let stop = AtomicBool::new(false);

    let cache = CacheWriter::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Value)>(64);
    let read_result = std::thread::scope(|scope| -> anyhow::Result<()> {
        let input_path = opts.input.clone();
        let reader_thread = scope.spawn(move || {
            input::for_each_record(&input_path, format, |i, v| tx.send((i, v)).is_ok())
        });
        // Content key (its first 128 bits: 16 bytes a record, not a 64-character string) ->
        // first position in this input.
        let mut first_seen: HashMap<u128, usize> = HashMap::new();
        let diagnosis_field = opts.diagnosis_field.clone();
        let stop = &stop;
        let jobs = rx.into_iter().map_while(move |(index, value)| {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            Some(classify(
                index,
                value,
                &diagnosis_field,
                &data_root,
                &reader,
                &mut first_seen,
            ))
        });
        let work = |job: Job| match job {
            Job::Skip {
                index,
                image,
                reason,
            } => Outcome::Skip {
                index,
                image,
                reason,
            },
            Job::Already => Outcome::Already,
            Job::Changed(c) => Outcome::Changed(c),
            Job::Work {
                index,
                record,
                image,
            } => process(
                index,
                *record,
                image,
                opts,
                &image_root,
                &project_dir,
                &cache,
            ),
        };
        ordered_map_iter(jobs, opts.threads, work, |_, outcome| {
            if fatal.is_some() {
                return;
            }
            state.done += 1;
            match &outcome {
                Outcome::Skip { .. } => state.skipped += 1,
                Outcome::Kept(_) => state.kept += 1,
                Outcome::Already => writer.tally.already += 1,
                Outcome::Changed(_) | Outcome::Fatal(_) => {}
            }
            if let Outcome::Changed(c) = outcome {
                writer.tally.already += 1;
                writer.tally.changes.push(*c);
                progress(&state);
                return;
            }
            if let Outcome::Fatal(e) = outcome {
                fatal = Some(e);
                stop.store(true, Ordering::Relaxed);
                return;
            }
            batch.push(outcome);
            if batch.len() >= BATCH || last_commit.elapsed() >= COMMIT_EVERY {
                if let Err(e) = writer.commit(project.conn_mut(), &mut batch) {
                    fatal = Some(e);
                    stop.store(true, Ordering::Relaxed);
                }
                last_commit = Instant::now();
            }
            progress(&state);
        });
        let read = reader_thread
            .join()
            .expect("the input reader does not panic");
        if fatal.is_none() {
            read?;
        }
        Ok(())
    });
    // What was done before a failure is kept: a re-run goes on from there.
    let committed = writer.commit(project.conn_mut(), &mut batch);
    if let Some(e) = fatal {
        return Err(e);
    }
    committed?;
    read_result?;
    let splits_assigned = project.assign_splits(opts.ratios)?;
    let mut changes_applied = 0;
    if opts.apply_changes {
        for c in &writer.tally.changes {
            c.apply(&mut project, &writer.import_who)?;
            changes_applied += 1;
        }
    }
    let report = writer.tally;
    let report = PrepareReport {
        run_id,
        input: input_name,
        project: opts.project.display().to_string(),
        records_in_input: total,
        kept: report.kept,
        kept_without_box: report.kept_without_box,
        already_in_project: report.already,
        changed: report.changes.len(),
        changed_examples: report
            .changes
            .iter()
            .take(EXAMPLES_PER_REASON)
            .map(changes::Change::line)
            .collect(),
        changes_applied,
        skipped: report.skipped.values().map(|v| v.0).sum(),
        skipped_by_reason: report.groups(),
        splits_assigned,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    project.conn().execute(
        "UPDATE runs SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), report = ?1 \
         WHERE id = ?2",
        params![json, run_id],
    )?;
    write_atomic(&project.dir().join("prepare-report.json"), json.as_bytes())?;
    Ok(report)
}

/// The sequential stage: validation, the image path, duplicates and resumption.
fn classify(
    index: usize,
    value: Value,
    diagnosis_field: &str,
    data_root: &Path,
    reader: &Connection,
    first_seen: &mut HashMap<u128, usize>,
) -> Job {
    let image_hint = value
        .get("images")
        .and_then(|i| i.get(0).or(Some(i)))
        .and_then(Value::as_str)
        .map(str::to_string);
    let record = match parse_source(value, diagnosis_field) {
        Ok(r) => r,
        Err(reason) => {
            return Job::Skip {
                index,
                image: image_hint,
                reason,
            }
        }
    };
    let short_key = u128::from_str_radix(&record.key[..32], 16).unwrap_or_default();
    if let Some(&first_index) = first_seen.get(&short_key) {
        return Job::Skip {
            index,
            image: image_hint,
            reason: SkipReason::Duplicate { first_index },
        };
    }
    first_seen.insert(short_key, index);
    match changes::compare(reader, &record, index, SAME_BOX_PX) {
        Ok(changes::Lookup::Same) => return Job::Already,
        Ok(changes::Lookup::Changed(c)) => return Job::Changed(c),
        Ok(changes::Lookup::New) => {}
        // A locked or unreadable database shows up again at commit; treat the record as new.
        Err(_) => {}
    }
    match relative_image_path(data_root, &record.image) {
        Ok(image) => Job::Work {
            index,
            record: Box::new(record),
            image,
        },
        Err(p) => Job::Skip {
            index,
            image: image_hint,
            reason: SkipReason::PathOutsideRoot(p),
        },
    }
}

/// The parallel stage: decode, detect, remove the outline, write the cache copy.
fn process(
    index: usize,
    record: SourceRecord,
    image: String,
    opts: &PrepareOptions,
    root: &Path,
    project_dir: &Path,
    cache: &CacheWriter,
) -> Outcome {
    let skip = |reason| Outcome::Skip {
        index,
        image: Some(image.clone()),
        reason,
    };
    let path = root.join(&image);
    let real = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skip(SkipReason::MissingImage(image.clone()))
        }
        Err(e) => return skip(SkipReason::UnreadableImage(e.to_string())),
    };
    // A symbolic link may point out of the data root even when the path does not: followed
    // (the user built the layout, e.g. a data folder linked to storage elsewhere) unless
    // --stay-in-root.
    if opts.stay_in_root && !real.starts_with(root) {
        return skip(match escaping_link(root, &image) {
            Some((link, target)) => SkipReason::LinkOutsideRoot {
                image: image.clone(),
                link,
                target,
            },
            None => SkipReason::PathOutsideRoot(image.clone()),
        });
    }
    // Reading a FIFO or a device would block or never end.
    match std::fs::metadata(&real) {
        Ok(meta) => {
            if let Some(kind) = not_regular(&meta) {
                return skip(SkipReason::NotRegularFile {
                    image: image.clone(),
                    kind,
                });
            }
        }
        Err(e) => return skip(SkipReason::UnreadableImage(e.to_string())),
    }
    let bytes = match std::fs::read(&real) {
        Ok(b) => b,
        Err(e) => return skip(SkipReason::UnreadableImage(e.to_string())),
    };
    let load = LoadOptions {
        max_pixels: opts.max_pixels,
        jpeg: JpegDecoder::Fast,
    };
    let mut img = match decode_rgb8(&bytes, load) {
        Ok(img) => img,
        Err(e) => return skip(SkipReason::UnreadableImage(e.to_string())),
    };
    // A DICOM image is rendered to 8 bit; the cache keeps the rendering for training.
    let rendered = is_dicom(&bytes);
    drop(bytes);
    let detection = detect(&img, DetectMode::Robust);
    let (width, height) = (img.width(), img.height());
    let detected = detection.primary().map(|r| {
        (
            r.bbox.normalised(width, height),
            r.confidence.map(f64::from),
        )
    });
    if detected.is_none() && opts.skip_unboxed && record.given_box.is_none() {
        return skip(SkipReason::NoBoxFound);
    }
    let mut cache_image = None;
    if !detection.rois.is_empty() || rendered {
        let rel = cache_path(&image);
        let written = cache.write_once(&project_dir.join(&rel), || {
            remove_outlines(&mut img, &detection.rois);
            save_png_atomic(&img, &project_dir.join(&rel))
        });
        if let Err(e) = written {
            return Outcome::Fatal(e.context("cannot write the project's image cache"));
        }
        cache_image = Some(rel);
    }
    Outcome::Kept(Box::new(Prepared {
        index,
        record,
        image,
        width,
        height,
        detected,
        cache_image,
    }))
}

/// The first symbolic link on `image`'s path (relative to `root`) whose target lies outside
/// `root`: the link relative to the root and its real target.
fn escaping_link(root: &Path, image: &str) -> Option<(String, String)> {
    let mut rel = PathBuf::new();
    for part in Path::new(image).components() {
        rel.push(part);
        let path = root.join(&rel);
        if path.symlink_metadata().ok()?.file_type().is_symlink() {
            let target = path.canonicalize().ok()?;
            if !target.starts_with(root) {
                return Some((
                    rel.to_string_lossy().into_owned(),
                    target.display().to_string(),
                ));
            }
        }
    }
    None
}

/// The marker-free copy of an image, relative to the project: named by a hash of the image's
/// path, so records that share an image share one copy.
fn cache_path(image: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(image.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{CACHE_DIR}/{}/{hash}.png", &hash[..2])
}

/// Writes each cache file once even when several workers hold records of the same image: the
/// first writes, the others wait for it, so no worker reports a file that is still being
/// written. A file already there from an earlier run is complete (it got its name by rename).
#[derive(Default)]
struct CacheWriter {
    in_flight: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    done: std::sync::Condvar,
}

impl CacheWriter {
    fn write_once(
        &self,
        path: &Path,
        write: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        {
            let mut busy = self.in_flight.lock().unwrap();
            while busy.contains(path) {
                busy = self.done.wait(busy).unwrap();
            }
            if path.is_file() {
                return Ok(());
            }
            busy.insert(path.to_path_buf());
        }
        let result = write();
        self.in_flight.lock().unwrap().remove(path);
        self.done.notify_all();
        result
    }
}

/// Counts kept in memory during a run (the skipped rows themselves go to the database).
#[derive(Default)]
struct Tally {
    kept: usize,
    kept_without_box: usize,
    already: usize,
    /// Records already in the project that the input changes.
    changes: Vec<changes::Change>,
    /// reason -> (count, first examples)
    skipped: BTreeMap<&'static str, (usize, Vec<SkipLine>)>,
}

impl Tally {
    fn groups(&self) -> Vec<ReasonGroup> {
        let mut groups: Vec<ReasonGroup> = self
            .skipped
            .iter()
            .map(|(reason, (count, examples))| ReasonGroup {
                reason: reason.to_string(),
                count: *count,
                examples: examples.clone(),
            })
            .collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        groups
    }
}

/// Commits results for one run, and counts them.
struct BatchWriter {
    run_id: i64,
    /// Author of detected boxes.
    who: String,
    /// Author of boxes given by the input file.
    import_who: String,
    tally: Tally,
}

impl BatchWriter {
    /// Writes a batch of outcomes in one transaction.
    fn commit(&mut self, conn: &mut Connection, batch: &mut Vec<Outcome>) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (run_id, tally) = (self.run_id, &mut self.tally);
        let (who, import_who) = (self.who.as_str(), self.import_who.as_str());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for outcome in batch.drain(..) {
            match outcome {
                Outcome::Skip {
                    index,
                    image,
                    reason,
                } => {
                    let detail = reason.detail();
                    tx.execute(
                    "INSERT OR REPLACE INTO skipped(run_id, source_index, image, reason, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![run_id, index as i64, image, reason.code(), detail],
                )?;
                    let entry = tally.skipped.entry(reason.code()).or_default();
                    entry.0 += 1;
                    if entry.1.len() < EXAMPLES_PER_REASON {
                        entry.1.push(SkipLine {
                            record: index + 1,
                            image,
                            detail,
                        });
                    }
                }
                Outcome::Already | Outcome::Changed(_) | Outcome::Fatal(_) => {}
                Outcome::Kept(p) => {
                    if insert_record(&tx, &p, who, import_who)? {
                        tally.kept += 1;
                        if p.detected.is_none() && p.record.given_box.is_none() {
                            tally.kept_without_box += 1;
                        }
                    } else {
                        tally.already += 1;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Inserts one prepared record with its boxes; `false` when another process got there first.
fn insert_record(
    tx: &rusqlite::Transaction,
    p: &Prepared,
    who: &str,
    import_who: &str,
) -> anyhow::Result<bool> {
    let r = &p.record;
    let fields = match &r.answer {
        Answer::Fields(f) => Some(Value::Object(f.clone()).to_string()),
        Answer::Text(_) => None,
    };
    let block = r.roiscope.as_ref();
    let status = block
        .and_then(|b| b["status"].as_str())
        .and_then(ReviewStatus::parse)
        .unwrap_or(if p.detected.is_none() && r.given_box.is_none() {
            ReviewStatus::NeedsFix
        } else {
            ReviewStatus::Unreviewed
        });
    let split = block
        .and_then(|b| b["split"].as_str())
        .and_then(Split::parse)
        .map(Split::as_str);
    let inserted = tx.execute(
        "INSERT INTO records(key, source_index, image, width, height, record, fields, \
         diagnosis, status, split, stratum, cache_image) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT(key) DO NOTHING",
        params![
            r.key,
            p.index as i64,
            p.image,
            p.width,
            p.height,
            Value::Object(r.record.clone()).to_string(),
            fields,
            r.diagnosis,
            status.as_str(),
            split,
            stratum(&r.answer),
            p.cache_image,
        ],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    let id = tx.last_insert_rowid();
    let put = |source: BoxSource, c: [f64; 4], conf: Option<f64>, who: &str, at: Option<&str>| {
        tx.execute(
            "INSERT OR REPLACE INTO boxes(record_id, source, x0, y0, x1, y1, confidence, who, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
             coalesce(?9, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            params![id, source.as_str(), c[0], c[1], c[2], c[3], conf, who, at],
        )
    };
    if let Some(boxes) = block.and_then(|b| b["boxes"].as_array()) {
        // A JSON-lines export carries every box with its origin: restore them as they were.
        for b in boxes {
            let (Some(source), Ok(c)) = (
                b["source"].as_str().and_then(BoxSource::parse),
                serde_json::from_value::<[f64; 4]>(b["box"].clone()),
            ) else {
                continue;
            };
            put(
                source,
                c,
                b["confidence"].as_f64(),
                b["who"].as_str().unwrap_or(import_who),
                b["at"].as_str(),
            )?;
        }
        return Ok(true);
    }
    if let Some((c, conf)) = p.detected {
        put(BoxSource::Detected, c, conf, who, None)?;
    }
    if let Some(given) = r.given_box {
        let same = p.detected.is_some_and(|(d, _)| {
            let scale = [p.width, p.height, p.width, p.height].map(f64::from);
            (0..4).all(|i| ((d[i] - given[i]) * scale[i]).abs() <= SAME_BOX_PX)
        });
        if !same {
            put(BoxSource::Corrected, given, None, import_who, None)?;
        }
    }
    Ok(true)
}

/// A second, read-only connection for the sequential stage's lookups.
fn read_only(db: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}
