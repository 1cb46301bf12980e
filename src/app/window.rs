//! The real window: eframe around the [`Workbench`], the renderer choice, the window's size,
//! the frame log the responsiveness benchmark reads, and saving on close.

use std::path::PathBuf;

use egui::Ui;

use super::settings::{Settings, STORAGE_KEY};
use super::{Command, Workbench};

/// The eframe application around the [`Workbench`].
struct App {
    workbench: Workbench,
    frame_log: Option<FrameLog>,
}

/// `$ROISCOPE_FRAME_LOG`: one line per frame, for the responsiveness benchmark
/// (`scripts/bench-workbench`): the frame's number, its start as seconds since the Unix epoch,
/// the workbench's UI pass in this frame (ms) and eframe's CPU time of the frame before (ms: UI
/// pass, tessellation, texture upload and GPU submission, without the wait for the surface),
/// and how long the oldest training event drawn in this frame had waited for it (ms; `-` when
/// the frame took none). The first frame asks for a second one at once, so the second line's
/// time is when the first frame had been painted. A line starting with `#` notes an event
/// (`# opened TIME`: a project finished opening, TIME in seconds since the epoch).
struct FrameLog {
    out: std::io::BufWriter<std::fs::File>,
    frame: u64,
}

impl FrameLog {
    fn from_env() -> Option<FrameLog> {
        let path = std::env::var_os("ROISCOPE_FRAME_LOG")?;
        match std::fs::File::create(&path) {
            Ok(f) => Some(FrameLog {
                out: std::io::BufWriter::new(f),
                frame: 0,
            }),
            Err(e) => {
                eprintln!("roiscope: cannot write the frame log {path:?}: {e}");
                None
            }
        }
    }

    fn write(
        &mut self,
        start: std::time::SystemTime,
        ui: std::time::Duration,
        cpu: Option<f32>,
        event_wait: Option<std::time::Duration>,
    ) {
        use std::io::Write;
        let since_epoch = start
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let cpu = cpu.map_or_else(|| "-".to_string(), |s| format!("{:.3}", s * 1e3));
        let waited = event_wait.map_or_else(
            || "-".to_string(),
            |w| format!("{:.3}", w.as_secs_f64() * 1e3),
        );
        let _ = writeln!(
            self.out,
            "{} {since_epoch:.6} {:.3} {cpu} {waited}",
            self.frame,
            ui.as_secs_f64() * 1e3
        );
        let _ = self.out.flush();
        self.frame += 1;
    }
}

impl FrameLog {
    fn note(&mut self, what: &str) {
        use std::io::Write;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let _ = writeln!(self.out, "# {what} {now:.6}");
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut Ui, frame: &mut eframe::Frame) {
        let start = (std::time::SystemTime::now(), std::time::Instant::now());
        let was_opening = self.workbench.opening.is_some();
        self.workbench.ui(ui);
        if let Some(log) = &mut self.frame_log {
            if was_opening && self.workbench.opening.is_none() {
                log.note("opened");
            }
            if log.frame == 0 {
                ui.ctx().request_repaint();
            }
            let event_wait = self.workbench.training.event_wait.take();
            log.write(
                start.0,
                start.1.elapsed(),
                frame.info().cpu_usage,
                event_wait,
            );
        }
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // The last chance for an edit still in a field (the close request usually saved it).
        self.workbench.flush_fields();
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.workbench.settings);
    }
}

/// `roiscope` with no command: opens the window on `$ROISCOPE_PROJECT`, else the last project,
/// else the sample project (prepared into the user's data folder the first time).
///
/// The window draws through OpenGL (eframe's glow renderer); where no OpenGL context can be made
/// it opens through wgpu (Vulkan) instead. `$ROISCOPE_RENDERER=wgpu` asks for wgpu first. On a
/// machine without a GPU (Mesa's llvmpipe rasterising in software) glow draws a frame in about a
/// fifth of wgpu's time (BENCHMARKS.md, the real window).
pub fn run() -> anyhow::Result<()> {
    let wgpu_first = std::env::var("ROISCOPE_RENDERER").is_ok_and(|r| r == "wgpu");
    let order = if wgpu_first {
        [eframe::Renderer::Wgpu, eframe::Renderer::Glow]
    } else {
        [eframe::Renderer::Glow, eframe::Renderer::Wgpu]
    };
    let mut failures = Vec::new();
    for renderer in order {
        // Set once the app exists: an error after that is not the renderer failing to start.
        let started = std::rc::Rc::new(std::cell::Cell::new(false));
        let result = eframe::run_native("roiscope", native_options(renderer), {
            let started = started.clone();
            Box::new(move |cc| {
                started.set(true);
                Ok(Box::new(new_app(cc)))
            })
        });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if !started.get() => {
                eprintln!("roiscope: the {renderer} renderer did not start: {e}");
                failures.push(format!("{renderer}: {e}"));
            }
            Err(e) => anyhow::bail!("the workbench window failed: {e}"),
        }
    }
    anyhow::bail!("cannot open the workbench window ({})", failures.join("; "))
}

/// The window's first size: `$ROISCOPE_WINDOW_SIZE` (`WIDTHxHEIGHT`, as the screenshots at
/// 1280x720 use), else 1500 x 950.
fn window_size() -> [f32; 2] {
    const DEFAULT: [f32; 2] = [1500.0, 950.0];
    let Ok(v) = std::env::var("ROISCOPE_WINDOW_SIZE") else {
        return DEFAULT;
    };
    let parsed = v
        .split_once('x')
        .and_then(|(w, h)| Some([w.trim().parse::<f32>().ok()?, h.trim().parse::<f32>().ok()?]));
    match parsed {
        Some([w, h]) if w >= 320.0 && h >= 240.0 => [w, h],
        _ => {
            eprintln!(
                "roiscope: $ROISCOPE_WINDOW_SIZE={v:?} is not WIDTHxHEIGHT of at least 320x240; \
                 the window opens at 1500x950"
            );
            DEFAULT
        }
    }
}

fn native_options(renderer: eframe::Renderer) -> eframe::NativeOptions {
    eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size(window_size())
            .with_title("roiscope"),
        renderer,
        // Dithering adds a noise term to every pixel's shader: 13% of the frame in software
        // (median 22.7 vs 26.3 ms flipping images under llvmpipe); it only hides banding in
        // smooth gradients, which the workbench hardly draws (its noise is under half a level,
        // so flat colours and 8-bit image pixels come out the same either way).
        dithering: false,
        // Reused by the second try when the first renderer does not start (winit makes one
        // event loop per process); also the default.
        run_and_return: true,
        // A size asked for in $ROISCOPE_WINDOW_SIZE wins over the one the last session kept.
        persist_window: std::env::var_os("ROISCOPE_WINDOW_SIZE").is_none(),
        ..Default::default()
    }
}

fn new_app(cc: &eframe::CreationContext<'_>) -> App {
    let settings: Settings = cc
        .storage
        .and_then(|s| eframe::get_value(s, STORAGE_KEY))
        .unwrap_or_default();
    let mut workbench = Workbench::new(settings);
    // $ROISCOPE_PROJECT opens that project instead of the last one.
    let chosen = std::env::var_os("ROISCOPE_PROJECT").map(PathBuf::from);
    match chosen.or_else(|| workbench.settings.project.clone()) {
        Some(dir) if dir.exists() => workbench.open_in_background(dir),
        _ => workbench.commands.push(Command::OpenSample),
    }
    App {
        workbench,
        frame_log: FrameLog::from_env(),
    }
}
