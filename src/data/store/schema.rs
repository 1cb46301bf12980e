//! The project database schema and its migrations.
//!
//! The schema version is SQLite's `user_version`. Each migration takes the database from version
//! `n` to `n + 1` inside one transaction, so a project is never left half-migrated. A database
//! written by a newer roiscope is refused rather than guessed at.

use rusqlite::Connection;

/// `application_id` of a roiscope project database ("ROIS"), so `file` and roiscope can tell
/// a project from any other SQLite file.
pub const APPLICATION_ID: i64 = 0x524F_4953;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1: records, their boxes by source, review status, splits, and the edit history.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE records (
        id           INTEGER PRIMARY KEY,
        key          TEXT NOT NULL UNIQUE,     -- SHA-256 of the canonical input record
        source_index INTEGER NOT NULL,         -- position in the input of the first import
        image        TEXT NOT NULL,            -- relative to the data root
        width        INTEGER NOT NULL,
        height       INTEGER NOT NULL,
        record       TEXT NOT NULL,            -- the input object, unknown keys verbatim
        fields       TEXT,                     -- current structured fields (JSON object)
        diagnosis    TEXT NOT NULL,            -- current diagnosis target
        status       TEXT NOT NULL DEFAULT 'unreviewed'
                     CHECK (status IN ('unreviewed', 'accepted', 'rejected', 'needs-fix')),
        split        TEXT CHECK (split IN ('train', 'val', 'test')),
        stratum      TEXT NOT NULL,
        cache_image  TEXT,                     -- marker-free copy, relative to the project
        created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    ) STRICT;
    CREATE TABLE boxes (
        record_id  INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
        source     TEXT NOT NULL CHECK (source IN ('detected', 'corrected', 'predicted')),
        x0 REAL NOT NULL, y0 REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,  -- normalised
        confidence REAL,
        who        TEXT NOT NULL,
        at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        PRIMARY KEY (record_id, source)
    ) STRICT;
    CREATE TABLE edits (
        id        INTEGER PRIMARY KEY,
        record_id INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
        kind      TEXT NOT NULL,               -- box, status, field, split
        target    TEXT NOT NULL DEFAULT '',    -- box source or field name
        before    TEXT,                        -- JSON, NULL when there was none
        after     TEXT,
        who       TEXT NOT NULL,
        at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        state     TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('done', 'undone', 'dropped'))
    ) STRICT;
    CREATE INDEX edits_by_record ON edits(record_id, id);
    CREATE INDEX records_by_split ON records(split, id);
    "#,
    // v2: prepare runs and the records each one skipped, for the report and `project info`.
    r#"
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        input       TEXT NOT NULL,
        started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        finished_at TEXT,
        report      TEXT                       -- JSON summary, written when the run ends
    ) STRICT;
    CREATE TABLE skipped (
        run_id       INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        source_index INTEGER NOT NULL,
        image        TEXT,
        reason       TEXT NOT NULL,
        detail       TEXT NOT NULL,
        PRIMARY KEY (run_id, source_index)
    ) STRICT;
    "#,
    // v3: model-assisted pre-annotation runs (the records each one covers, in order) and what
    // the model said about each record: box, match score, verdict with its reason, or an error.
    r#"
    CREATE TABLE preannotation_runs (
        id          INTEGER PRIMARY KEY,
        model       TEXT NOT NULL,
        checkpoint  TEXT NOT NULL,
        scope       TEXT NOT NULL,             -- what was asked for, in words
        record_ids  TEXT NOT NULL,             -- JSON array of the records to run, in order
        started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    ) STRICT;
    CREATE TABLE predictions (
        run_id      INTEGER NOT NULL REFERENCES preannotation_runs(id) ON DELETE CASCADE,
        record_id   INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
        x0 REAL, y0 REAL, x1 REAL, y1 REAL,    -- normalised; NULL when the record failed
        match_score REAL,
        threshold   REAL,
        verified    INTEGER,
        generated   TEXT,
        verdict     TEXT NOT NULL,             -- the verdict with why, or the error
        error       TEXT,
        at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        PRIMARY KEY (run_id, record_id)
    ) STRICT;
    CREATE INDEX predictions_by_record ON predictions(record_id, run_id);
    "#,
];

/// The version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "this project was written by a newer roiscope (schema version {found}; this roiscope \
         understands up to {supported}): upgrade roiscope to open it"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("not a roiscope project database (application id {0:#x})")]
    Foreign(i64),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Brings the database to [`CURRENT_VERSION`], migrating step by step; an empty database is
/// created. Returns the version found before migrating.
pub fn migrate(conn: &mut Connection) -> Result<i64, SchemaError> {
    migrate_to(conn, CURRENT_VERSION)
}

/// Migrates up to `target` (tests build older projects with this).
pub fn migrate_to(conn: &mut Connection, target: i64) -> Result<i64, SchemaError> {
    // Up to date: nothing to write, so no write lock. Opening a project to read it (an export
    // while the GUI edits) must not queue behind the writer.
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app == APPLICATION_ID && found == target {
        return Ok(found);
    }
    if app == APPLICATION_ID && found > CURRENT_VERSION {
        return Err(SchemaError::TooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let empty: bool = tx.query_row(
        "SELECT count(*) = 0 FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if app != APPLICATION_ID && !(app == 0 && empty) {
        return Err(SchemaError::Foreign(app));
    }
    if found > CURRENT_VERSION {
        return Err(SchemaError::TooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().take(target as usize) {
        if (step as i64) >= found {
            tx.execute_batch(sql)?;
        }
    }
    if target > found {
        tx.pragma_update(None, "user_version", target)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    Ok(found)
}
