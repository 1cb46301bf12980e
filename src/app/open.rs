//! Opening a project: the store opened and every record read into the browser's rows. At
//! 160,000 records that is seconds of SQLite reads and JSON parsing, so the window does it on a
//! worker thread and shows how far it got; the project that was open stays usable meanwhile.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

use super::browser::Row;
use super::view::Rows;
use crate::data::store::{Project, RecordFilter};

/// A project read into memory, ready to show.
pub struct Loaded {
    pub dir: PathBuf,
    pub project: Project,
    pub rows: Rows,
}

/// How far a load got: records read, of how many (0 until counted).
#[derive(Default)]
pub struct Progress {
    pub done: AtomicUsize,
    pub total: AtomicUsize,
    /// Set to stop the load early (a newer one replaced it).
    pub cancel: AtomicBool,
}

/// Opens the project in `dir` and reads its rows, counting them in `progress`.
pub fn load(dir: &Path, progress: &Progress) -> anyhow::Result<Loaded> {
    let project = Project::open(dir)?;
    let total = project.record_count()?.max(0) as usize;
    progress.total.store(total, Ordering::Relaxed);
    let mut rows = Vec::with_capacity(total);
    project.for_each_record(RecordFilter::All, |r| {
        if progress.cancel.load(Ordering::Relaxed) {
            anyhow::bail!("cancelled: another project was opened");
        }
        rows.push(Arc::new(Row::new(&r, project.image_path(&r))));
        progress.done.store(rows.len(), Ordering::Relaxed);
        Ok(())
    })?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        project,
        rows,
    })
}

/// A load running on a worker thread.
pub struct Opening {
    pub dir: PathBuf,
    pub progress: Arc<Progress>,
    rx: Receiver<anyhow::Result<Loaded>>,
}

impl Opening {
    /// Starts loading `dir` on a worker; `repaint` is asked for when it is done.
    pub fn start(dir: PathBuf, repaint: Option<egui::Context>) -> Opening {
        let progress = Arc::new(Progress::default());
        let (tx, rx) = channel();
        let worker_progress = progress.clone();
        let worker_dir = dir.clone();
        let spawned = std::thread::Builder::new()
            .name("roiscope-open".into())
            .spawn(move || {
                let _ = tx.send(load(&worker_dir, &worker_progress));
                if let Some(ctx) = repaint {
                    ctx.request_repaint();
                }
            });
        let rx = match spawned {
            Ok(_) => rx,
            Err(e) => {
                // No thread: the answer is the error, ready at once.
                let (tx, rx) = channel();
                let _ = tx.send(Err(anyhow::anyhow!(
                    "cannot start a thread to open it: {e}"
                )));
                rx
            }
        };
        Opening { dir, progress, rx }
    }

    /// The result once the worker is done.
    pub fn poll(&self) -> Option<anyhow::Result<Loaded>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(anyhow::anyhow!(
                "the worker reading the project stopped unexpectedly"
            ))),
        }
    }

    /// "12,000 of 160,000 records".
    pub fn describe(&self) -> String {
        let done = self.progress.done.load(Ordering::Relaxed);
        match self.progress.total.load(Ordering::Relaxed) {
            0 => "opening the store".into(),
            total => format!("{} of {} records read", thousands(done), thousands(total)),
        }
    }

    /// Fraction done, 0 to 1.
    pub fn fraction(&self) -> f32 {
        let done = self.progress.done.load(Ordering::Relaxed);
        match self.progress.total.load(Ordering::Relaxed) {
            0 => 0.0,
            total => (done as f32 / total as f32).min(1.0),
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.progress.cancel.store(true, Ordering::Relaxed);
    }
}

/// 160000 -> "160,000".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
