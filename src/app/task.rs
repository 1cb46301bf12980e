//! A named piece of background work (pre-annotation, evaluation, export) that the frame loop
//! polls: it runs on its own thread with shared progress counters and a cancel flag, and its
//! result (or the reason it has none) is taken once. A worker that dies (a panic in the model
//! code) is reported as such, not waited for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

/// How far a task got: `done` of `total` (0 until known); `cancel` asks it to stop.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicUsize,
    pub total: AtomicUsize,
    pub cancel: AtomicBool,
}

impl Progress {
    pub fn set(&self, done: usize, total: usize) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

pub struct Task<T> {
    pub progress: Arc<Progress>,
    rx: Receiver<Result<T, String>>,
}

impl<T: Send + 'static> Task<T> {
    /// Starts `work` on a thread called `name`; `repaint` is asked for when it ends.
    pub fn spawn(
        name: &str,
        repaint: Option<egui::Context>,
        work: impl FnOnce(&Progress) -> anyhow::Result<T> + Send + 'static,
    ) -> Task<T> {
        let progress = Arc::new(Progress::default());
        let (tx, rx) = channel();
        let shared = progress.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("roiscope-{name}"))
            .spawn(move || {
                let result = work(&shared).map_err(|e| format!("{e:#}"));
                // The window may be gone; nothing then waits for the result.
                let _ = tx.send(result);
                if let Some(ctx) = repaint {
                    ctx.request_repaint();
                }
            });
        let (tx, failed) = channel();
        if let Err(e) = spawned {
            let _ = tx.send(Err(format!("cannot start a {name} thread: {e}")));
            return Task {
                progress,
                rx: failed,
            };
        }
        Task { progress, rx }
    }

    /// The result once the work has ended; `None` while it runs.
    pub fn poll(&self) -> Option<Result<T, String>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(
                "the worker stopped unexpectedly (see the terminal)".into(),
            )),
        }
    }

    pub fn cancel(&self) {
        self.progress.cancel.store(true, Ordering::Relaxed);
    }

    pub fn cancelling(&self) -> bool {
        self.progress.cancelled()
    }

    /// `(done, total)` so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.progress.done.load(Ordering::Relaxed),
            self.progress.total.load(Ordering::Relaxed),
        )
    }

    pub fn fraction(&self) -> f32 {
        let (done, total) = self.counts();
        if total == 0 {
            0.0
        } else {
            done as f32 / total as f32
        }
    }
}
