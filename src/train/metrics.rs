//! `RUN_DIR/metrics.jsonl`: every [`Event`] of a run, one JSON object a line, with `schema`
//! ([`METRICS_SCHEMA`]) and `time` (seconds since 1970) beside the event's own keys. The command
//! line and the workbench write it through [`MetricsWriter`] and read it back with
//! [`read_metrics`], as the same typed events.
//!
//! One error policy: a line that cannot be written (a full disk) is reported once and the
//! writer stops writing; the run goes on, since its checkpoints matter more than its log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Deserialize;

use super::trainer::{Event, METRICS_SCHEMA};

/// The metrics file inside a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Appends events to a run's metrics file (a continued run's events follow its earlier ones).
pub struct MetricsWriter {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl MetricsWriter {
    pub fn open(run: &Path) -> anyhow::Result<Self> {
        let path = run.join(METRICS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsWriter {
            path,
            file: Some(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event as a line. Returns a warning, once, when writing fails; later events
    /// are not written.
    pub fn write(&mut self, event: &Event) -> Option<String> {
        let file = self.file.as_mut()?;
        let result = (|| -> anyhow::Result<()> {
            let mut line = serde_json::to_value(event)?;
            line["schema"] = METRICS_SCHEMA.into();
            line["time"] = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
                .into();
            // One write call per line: a reader (or a crash) never sees half of one.
            file.write_all((line.to_string() + "\n").as_bytes())?;
            Ok(())
        })();
        match result {
            Ok(()) => None,
            Err(e) => {
                self.file = None;
                Some(format!(
                    "cannot write {} ({e:#}); the run goes on without logging its events",
                    self.path.display()
                ))
            }
        }
    }
}

/// One line of a metrics file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MetricsLine {
    /// Seconds since 1970 when the event was written.
    #[serde(default)]
    pub time: f64,
    #[serde(flatten)]
    pub event: Event,
}

/// The events of a metrics file, and the numbers of the lines that could not be read (a line
/// cut short by a crash, or an event this version does not know).
pub fn read_metrics(path: &Path) -> anyhow::Result<(Vec<MetricsLine>, Vec<usize>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = Vec::new();
    let mut unreadable = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetricsLine>(line) {
            Ok(l) => lines.push(l),
            Err(_) => unreadable.push(i + 1),
        }
    }
    Ok((lines, unreadable))
}
