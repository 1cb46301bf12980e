//! One training run, started the same way by `roiscope train` and by the window's Training tab:
//! the run folder and its record (`run.json`), the trainer built from a [`Plan`] (a new run or a
//! resumed one), the metrics file every event goes to (one error policy: a file that cannot be
//! written becomes a warning and the run goes on), the thread and CPU pool it computes on, and
//! its controls. Callers only show the events and send [`Control`]s.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::checkpoint::latest_checkpoint;
use super::metrics::MetricsWriter;
use super::run_record::{extend_config, RunRecord};
use super::trainer::{
    checkpoint_config, load_inputs, load_val_examples, Control, Event, TrainConfig, Trainer,
};

/// Called after an event is handed over (the window repaints).
type Wake = Arc<dyn Fn() + Send + Sync>;

/// What a run starts from.
#[derive(Debug, Clone)]
pub enum Plan {
    /// A new run in `out` (created; it must be new or empty).
    New {
        project: PathBuf,
        model: PathBuf,
        /// `cpu`, `cuda:0`, `cuda:0,1`, … (one replica each).
        devices: String,
        config: TrainConfig,
        out: PathBuf,
    },
    /// The run in `run` continued from its latest complete checkpoint. What is `None` is the
    /// run's own (its `run.json`); `config` (a TOML file) and `max_steps` extend a run (see
    /// [`extend_config`]).
    Resume {
        run: PathBuf,
        project: Option<PathBuf>,
        model: Option<PathBuf>,
        devices: Option<String>,
        config: Option<PathBuf>,
        max_steps: Option<usize>,
    },
}

impl Plan {
    /// The run folder.
    pub fn dir(&self) -> &Path {
        match self {
            Plan::New { out, .. } => out,
            Plan::Resume { run, .. } => run,
        }
    }

    /// Loads the model and data and builds the trainer (on the run's thread: a 2B model takes
    /// a while). A new run's folder is created here and its `run.json` written once the
    /// trainer exists.
    fn build(self) -> anyhow::Result<Trainer> {
        match self {
            Plan::New {
                project,
                model,
                devices,
                config,
                out,
            } => {
                config.validate()?;
                if out.exists()
                    && std::fs::read_dir(&out)
                        .with_context(|| format!("cannot read {}", out.display()))?
                        .next()
                        .is_some()
                {
                    bail!("{} is not empty; give a new run folder", out.display());
                }
                let (specs, examples, folder) =
                    load_inputs(&project, &model, &devices, config.base_dtype)?;
                let val = load_val_examples(&project)?;
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?;
                let record = RunRecord::new(&project, &model, &devices, &config)?;
                let mut trainer = Trainer::new(config, folder, examples, &out, &specs)?;
                record.write(&out)?;
                trainer.set_validation(val);
                Ok(trainer)
            }
            Plan::Resume {
                run,
                project,
                model,
                devices,
                config,
                max_steps,
            } => {
                let record = RunRecord::read(&run)?;
                let (project, model) = match (project, model, &record) {
                    (Some(p), Some(m), _) => (p, m),
                    (p, m, Some(r)) => (
                        p.unwrap_or_else(|| r.project.clone()),
                        m.unwrap_or_else(|| r.model.clone()),
                    ),
                    _ => bail!(
                        "{} has no run.json (it was started by an older roiscope); give \
                         --project and --model",
                        run.display()
                    ),
                };
                let devices = devices
                    .or_else(|| record.as_ref().map(|r| r.devices.clone()))
                    .unwrap_or_else(|| "cpu".into());
                let saved = checkpoint_config(&latest_checkpoint(&run)?)?;
                let config = if config.is_some() || max_steps.is_some() {
                    Some(extend_config(&saved, config.as_deref(), max_steps)?)
                } else {
                    None
                };
                // The base weights' dtype is a setting of the run.
                let base_dtype = config.as_ref().unwrap_or(&saved).base_dtype;
                let (specs, examples, folder) =
                    load_inputs(&project, &model, &devices, base_dtype)?;
                let val = load_val_examples(&project)?;
                let mut trainer = Trainer::resume_with(folder, examples, &run, &specs, config)?;
                trainer.set_validation(val);
                Ok(trainer)
            }
        }
    }
}

/// Where a run computes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Threads of the run's own CPU pool; `None`: the process's (`RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
    /// Below every ordinary thread, so that a window stays responsive (see
    /// [`lower_compute_priority`]).
    pub background: bool,
}

/// A run going on (or ended) on its own thread.
pub struct TrainingRun {
    dir: PathBuf,
    control: Sender<Control>,
    /// Events as the caller gets them, each with the moment it was handed over.
    events: Receiver<(Instant, Event)>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TrainingRun {
    /// Starts `plan` on a new thread; `wake` is called after each event is handed over (the
    /// window repaints). A plan that cannot be built ends with an [`Event::Error`] (and a new
    /// run's folder, if it was made and is still empty, is removed again).
    pub fn start(plan: Plan, options: Options, wake: impl Fn() + Send + Sync + 'static) -> Self {
        let wake: Wake = Arc::new(wake);
        let dir = plan.dir().to_path_buf();
        let (control_tx, control_rx) = channel();
        let (events_tx, events_rx) = channel();
        let run_dir = dir.clone();
        let thread = std::thread::spawn(move || {
            let result = run_plan(plan, options, &run_dir, control_rx, &events_tx, &wake);
            wake();
            result
        });
        TrainingRun {
            dir,
            control: control_tx,
            events: events_rx,
            thread: Some(thread),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends a control to the run; false when it has ended.
    pub fn send(&self, control: Control) -> bool {
        self.control.send(control).is_ok()
    }

    /// The next event if one is waiting (never blocks: the window's frame).
    pub fn try_event(&self) -> Result<(Instant, Event), TryRecvError> {
        self.events.try_recv()
    }

    /// The next event, waiting for it; an error once the run has ended and all were taken.
    pub fn next_event(&self) -> Result<Event, RecvError> {
        self.events.recv().map(|(_, e)| e)
    }

    /// The next event, waiting at most `limit` (a caller that also watches something else).
    pub fn next_event_within(&self, limit: Duration) -> Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(limit).map(|(_, e)| e)
    }

    /// Waits for the run's thread: the run's own result (its failure was also an event).
    pub fn join(mut self) -> anyhow::Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the training thread panicked"),
            None => Ok(()),
        }
    }
}

/// The run's thread: builds the trainer, then runs it with every event written to
/// `metrics.jsonl` before it is handed over.
fn run_plan(
    plan: Plan,
    options: Options,
    dir: &Path,
    control: Receiver<Control>,
    events: &Sender<(Instant, Event)>,
    wake: &Wake,
) -> anyhow::Result<()> {
    if options.background {
        lower_compute_priority();
    }
    let hand_over = |event: Event| {
        let _ = events.send((Instant::now(), event));
        wake();
    };
    let new = matches!(plan, Plan::New { .. }) && !dir.exists();
    // candle computes on the rayon pool it is called from: a run with a thread count has its own.
    let pool = match options.threads {
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .thread_name(|i| format!("trainer-{i}"))
                .build()?;
            if options.background {
                pool.broadcast(|_| lower_compute_priority());
            }
            Some(pool)
        }
        None => None,
    };
    let install = |f: &mut (dyn FnMut() -> anyhow::Result<()> + Send)| match &pool {
        Some(pool) => pool.install(f),
        None => f(),
    };
    let mut plan = Some(plan);
    let mut trainer = None;
    if let Err(e) = install(&mut || {
        trainer = Some(plan.take().expect("built once").build()?);
        Ok(())
    }) {
        if new {
            // A run that never started leaves no folder behind (only removed when empty).
            let _ = std::fs::remove_dir(dir);
        }
        hand_over(Event::Error {
            message: format!("{e:#}"),
        });
        return Err(e);
    }
    let mut trainer = trainer.expect("built");
    let (tx, rx) = channel();
    let forward = {
        let (events, dir, wake) = (events.clone(), dir.to_path_buf(), wake.clone());
        std::thread::spawn(move || write_and_forward(rx, &dir, &events, &*wake))
    };
    // The trainer's sender is dropped when it returns, which ends the forwarding thread.
    let mut control = Some(control);
    let result = install(&mut || trainer.run(&tx, &control.take().expect("run once")));
    drop(tx);
    let _ = forward.join();
    result
}

/// Writes each event to the run's metrics file, then hands it over. A file that cannot be
/// written does not stop the run: a warning says so and the events still reach the caller.
fn write_and_forward(
    rx: Receiver<Event>,
    dir: &Path,
    out: &Sender<(Instant, Event)>,
    wake: &(dyn Fn() + Send + Sync),
) {
    let warn = |message: String| {
        let _ = out.send((Instant::now(), Event::Warning { message }));
    };
    let mut metrics = MetricsWriter::open(dir)
        .map_err(|e| warn(format!("{e:#}; the run goes on without logging its events")))
        .ok();
    for event in rx {
        if let Some(message) = metrics.as_mut().and_then(|m| m.write(&event)) {
            warn(message);
        }
        if out.send((Instant::now(), event)).is_err() {
            break;
        }
        wake();
    }
}

/// Lowers the calling thread's scheduling priority so that a window's threads (and the
/// compositor's and software rasteriser's) go first. On Linux the thread joins SCHED_IDLE,
/// where it runs when no ordinary thread wants the core and a waking UI thread preempts it at
/// once; at nice 10 alone frames still waited up to 149 ms behind it on two cores
/// (BENCHMARKS.md). Where SCHED_IDLE is refused, nice 10 stays. Without privileges a thread
/// cannot raise its priority again, so a pool keeps it for its life.
pub fn lower_compute_priority() {
    // On Linux, PRIO_PROCESS and sched_setscheduler with 0 mean the calling thread.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that cannot be built (here: an empty project and no model folder) ends with an error event and a
    /// failed join, and leaves no run folder behind; a non-empty folder is never trained into.
    #[test]
    fn a_plan_that_cannot_be_built_reports_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        crate::data::store::Project::open_or_create(&project, dir.path(), "diagnosis").unwrap();
        let new = |out: PathBuf| Plan::New {
            project: project.clone(),
            model: dir.path().join("no-model"),
            devices: "cpu".into(),
            config: TrainConfig::default(),
            out,
        };
        let out = dir.path().join("run");
        let run = TrainingRun::start(new(out.clone()), Options::default(), || {});
        match run.next_event() {
            Ok(Event::Error { message }) => assert!(!message.is_empty()),
            other => panic!("expected an error event, got {other:?}"),
        }
        assert!(run.next_event().is_err(), "nothing after the error");
        assert!(run.join().is_err());
        assert!(!out.exists());

        let used = dir.path().join("used");
        std::fs::create_dir(&used).unwrap();
        std::fs::write(used.join("metrics.jsonl"), "old\n").unwrap();
        let run = TrainingRun::start(new(used.clone()), Options::default(), || {});
        let err = run.join().unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(used.join("metrics.jsonl")).unwrap(),
            "old\n"
        );
    }

    /// The trainer's threads give way to the window: SCHED_IDLE and nice 10, on a thread of its
    /// own (the calling thread's priority never comes back).
    #[cfg(target_os = "linux")]
    #[test]
    fn compute_threads_run_under_sched_idle_at_nice_10() {
        let (policy, nice) = std::thread::spawn(|| {
            super::lower_compute_priority();
            unsafe {
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(nice, 10);
    }
}
