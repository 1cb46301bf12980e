//! Responsiveness benchmark of the workbench (issue 6): frame times while flipping through a
//! project's records, one record per frame (the J key, as a user holding it down would at a
//! screen's 60 Hz), through the real UI (egui_kittest drives `Workbench::ui`; no window).
//!
//! Each frame's CPU time on the UI thread is timed in three parts:
//! - ui: the workbench's UI pass (`Workbench::ui`: takes decoded images into textures, lays out
//!   the browser, canvas and panels, runs the commands) and egui's end of frame;
//! - upload: the frame's texture changes handed to the GPU through `egui_wgpu::Renderer`, the
//!   renderer eframe uses in the real window (`queue.write_texture`);
//! - paint: tessellation, vertex upload, recording the render pass and submitting it.
//!
//! The device's own time (its copies, and with `--raster` drawing the frame into an off-screen
//! target of the window's size) is waited for after each frame and reported apart: on a machine
//! without a GPU the device is a software rasteriser (llvmpipe) competing for the same cores.
//! With `--no-gpu` only the UI pass is timed. Not included: acquiring and presenting a window
//! surface and winit's event handling (`scripts/bench-workbench` measures the real window).
//! Image decoding runs on the workbench's decoder threads, as in the app, competing with the UI
//! thread for the cores.
//!
//! Make a project of 1,000 images first (see BENCHMARKS.md), then:
//!
//! ```sh
//! cargo run --release --example workbench_flip -- PROJECT [--frames N] [--unpaced]
//!     [--raster | --no-gpu] [--suite]
//! ```
//!
//! With `--suite` (for a large project, e.g. 160,000 records, issue 24) the run goes through the
//! phases a user does, 60 frames a second, each timed as above: opening the project (File >
//! Open: read on a worker, the window drawing meanwhile), flipping (J) in id order and sorted by
//! diagnosis, wheel-scrolling the list, typing a search one character a frame and erasing it,
//! changing the status filter and the sort order. For the filter and sort changes it also gives
//! how long until the list showed the new order (computed on a worker).
//!
//! Each frame is timed by the clock (its parts as above) and by the UI thread's own time on a
//! CPU (CLOCK_THREAD_CPUTIME_ID), which leaves out the time it waited for a core that
//! other processes held. Exit status 1 if a frame's own CPU time was over 50 ms or the image
//! cache grew past its bounds.

use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use eframe::egui_wgpu::{self, wgpu, RenderState, ScreenDescriptor};
use egui::{Event, Key, Modifiers, TexturesDelta, Vec2};
use egui_kittest::{Harness, TestRenderer};
use roiscope::app::images::{CacheStats, MAX_FULL, MAX_THUMBS};
use roiscope::app::settings::Settings;
use roiscope::app::Workbench;

/// The issue's bound on one frame.
const BUDGET: Duration = Duration::from_millis(50);
/// The real window's default size (see `app::run`).
const WINDOW: [f32; 2] = [1500.0, 950.0];

fn main() -> anyhow::Result<()> {
    let mut project = None;
    let mut frames = None;
    let mut paced = true;
    let mut gpu = true;
    let mut raster = false;
    let mut suite = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => frames = Some(args.next().unwrap_or_default().parse::<usize>()?),
            "--unpaced" => paced = false,
            "--no-gpu" => gpu = false,
            "--raster" => raster = true,
            "--suite" => suite = true,
            _ if project.is_none() => project = Some(PathBuf::from(a)),
            _ => anyhow::bail!("unexpected argument {a}"),
        }
    }
    let project = project.ok_or_else(|| {
        anyhow::anyhow!(
            "usage: workbench_flip PROJECT [--frames N] [--unpaced] [--raster | --no-gpu]; \
             make PROJECT with `roiscope synthetic` and `roiscope prepare` (BENCHMARKS.md)"
        )
    })?;

    if suite {
        return run_suite(&project, gpu, raster, frames.unwrap_or(600));
    }
    let started = Instant::now();
    let mut wb = Workbench::new(Settings::default());
    wb.open_project(&project);
    anyhow::ensure!(wb.project.is_some(), "{:?}", wb.message);
    let records = wb.rows.len();
    let frames = frames.unwrap_or(records);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "project {} ({records} records) opened in {:.0} ms",
        project.display(),
        started.elapsed().as_secs_f64() * 1e3
    );

    let gpu = if gpu { Some(Gpu::new(raster)?) } else { None };
    let upload_time = Rc::new(Cell::new(Duration::ZERO));
    let mut builder = Harness::builder().with_size(Vec2::from(WINDOW));
    if let Some(g) = &gpu {
        let info = g.state.adapter.get_info();
        println!(
            "renderer: egui_wgpu on {} ({:?}, {:?})",
            info.name, info.device_type, info.backend
        );
        builder = builder.renderer(Upload {
            state: g.state.clone(),
            spent: upload_time.clone(),
        });
    }
    let mut h = builder.build_ui_state(|ui, wb: &mut Workbench| wb.ui(ui), wb);

    // Settle: the first frames install fonts and the first image arrives.
    let settle = Instant::now();
    while !h.state().images.idle() && settle.elapsed() < Duration::from_secs(10) {
        frame(&mut h, gpu.as_ref(), &upload_time, Vec::new());
        std::thread::sleep(Duration::from_millis(16));
    }

    let pace = Duration::from_secs_f64(1.0 / 60.0);
    let mut times = Vec::with_capacity(frames);
    let mut peak = CacheStats::default();
    let mut peak_textures = 0usize;
    let run = Instant::now();
    for i in 0..frames {
        times.push(frame(
            &mut h,
            gpu.as_ref(),
            &upload_time,
            key_events(Key::J),
        ));
        let s = h.state().images.stats();
        peak.full = peak.full.max(s.full);
        peak.thumbs = peak.thumbs.max(s.thumbs);
        peak.textures = peak.textures.max(s.textures);
        peak.queued = peak.queued.max(s.queued);
        peak_textures = peak_textures.max(h.ctx.tex_manager().read().num_allocated());
        if paced {
            let next = pace * (i as u32 + 1);
            if let Some(rest) = next.checked_sub(run.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    let wall = run.elapsed();
    let last = h.state().current.unwrap_or(0);

    // After the last flip: how long until the current image is on screen.
    let stop = Instant::now();
    while !current_ready(h.state()) && stop.elapsed() < Duration::from_secs(10) {
        frame(&mut h, gpu.as_ref(), &upload_time, Vec::new());
        std::thread::sleep(Duration::from_millis(5));
    }
    let settled = stop.elapsed();
    // And once the decoders are done: nothing is left queued or half-loaded.
    let idle = Instant::now();
    while !h.state().images.idle() && idle.elapsed() < Duration::from_secs(30) {
        frame(&mut h, gpu.as_ref(), &upload_time, Vec::new());
        std::thread::sleep(Duration::from_millis(16));
    }
    let end = h.state().images.stats();

    let cpu: Vec<Duration> = times.iter().map(FrameTime::cpu).collect();
    let over = cpu.iter().filter(|t| **t > BUDGET).count();
    let on_cpu: Vec<Duration> = times.iter().map(|t| t.on_cpu).collect();
    let over_on_cpu = on_cpu.iter().filter(|t| **t > BUDGET).count();
    println!(
        "{frames} frames, one J press each, {} ({:.1} s, {:.0} frames/s); reached record {} of {records}",
        if paced { "paced at 60 Hz" } else { "back to back" },
        wall.as_secs_f64(),
        frames as f64 / wall.as_secs_f64(),
        last + 1
    );
    let part = |f: fn(&FrameTime) -> Duration| times.iter().map(f).collect::<Vec<_>>();
    println!("frame CPU  {}", summary(cpu.clone()));
    println!("  on-CPU   {}", summary(on_cpu));
    println!("  ui       {}", summary(part(|t| t.ui)));
    if gpu.is_some() {
        println!("  upload   {}", summary(part(|t| t.upload)));
        println!("  paint    {}", summary(part(|t| t.paint)));
        let name = if raster { "raster" } else { "copies" };
        println!("device {name} {}", summary(part(|t| t.device)));
    }
    println!(
        "frames over {} ms: {over} of {frames} by the clock, {over_on_cpu} of {frames} on the CPU",
        BUDGET.as_millis()
    );
    if raster {
        let with: Vec<Duration> = times.iter().map(|t| t.cpu() + t.device).collect();
        let over = with.iter().filter(|t| **t > BUDGET).count();
        println!(
            "frame with the rasteriser's time {}; over {} ms: {over} of {frames}",
            summary(with),
            BUDGET.as_millis()
        );
    }
    println!(
        "after the last flip the record's image was on screen in {:.0} ms",
        ms(settled)
    );
    println!(
        "image cache at most {} full images (bound {MAX_FULL}), {} thumbnails (bound \
         {MAX_THUMBS}), {} textures, {} decodes queued; egui textures alive at most \
         {peak_textures}; when idle: {} full, {} thumbnails, {} queued",
        peak.full, peak.thumbs, peak.textures, peak.queued, end.full, end.thumbs, end.queued
    );
    for (i, p) in times.iter().enumerate().filter(|(_, t)| t.cpu() > BUDGET) {
        println!(
            "frame #{i} over budget: {:.1} ms CPU, {:.1} ms of it on the CPU (ui {:.1}, upload \
             {:.1}, paint {:.1})",
            ms(p.cpu()),
            ms(p.on_cpu),
            ms(p.ui),
            ms(p.upload),
            ms(p.paint)
        );
    }
    if let Some((i, p)) = times.iter().enumerate().max_by_key(|(_, t)| t.cpu()) {
        println!(
            "slowest frame #{i}: {:.1} ms CPU (ui {:.1}, upload {:.1}, paint {:.1})",
            ms(p.cpu()),
            ms(p.ui),
            ms(p.upload),
            ms(p.paint)
        );
    }
    let bounded = peak.full <= MAX_FULL && peak.thumbs <= MAX_THUMBS;
    if over_on_cpu > 0 || !bounded {
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct FrameTime {
    ui: Duration,
    upload: Duration,
    /// Tessellation, vertex upload, recording and submitting the draw.
    paint: Duration,
    /// Waiting for the device: its copies of the new textures and vertices, and with
    /// `--raster` the drawing.
    device: Duration,
    /// The UI thread's time on a CPU during the frame (its wall time less the time it was
    /// waiting for a core, or for the device).
    on_cpu: Duration,
}

impl FrameTime {
    /// What the UI thread spends producing the frame.
    fn cpu(&self) -> Duration {
        self.ui + self.upload + self.paint
    }
}

/// A press and release of `key`.
fn key_events(key: Key) -> Vec<Event> {
    [true, false]
        .map(|pressed| Event::Key {
            key,
            physical_key: None,
            pressed,
            repeat: false,
            modifiers: Modifiers::NONE,
        })
        .to_vec()
}

/// Runs one frame with `events` as its input; its time by part.
fn frame(
    h: &mut Harness<'static, Workbench>,
    gpu: Option<&Gpu>,
    upload_time: &Rc<Cell<Duration>>,
    events: Vec<Event>,
) -> FrameTime {
    h.input_mut().events.extend(events);
    upload_time.set(Duration::ZERO);
    let cpu_start = thread_cpu();
    let t = Instant::now();
    // One UI pass; the harness hands the texture changes to `Upload` at its end.
    h.step();
    let upload = upload_time.get();
    let ui = t.elapsed().saturating_sub(upload);
    let (paint, device) = match gpu {
        Some(g) => g.paint(&h.ctx, h.output()),
        None => (Duration::ZERO, Duration::ZERO),
    };
    FrameTime {
        ui,
        upload,
        paint,
        device,
        on_cpu: thread_cpu().saturating_sub(cpu_start),
    }
}

/// Time this thread has run on a CPU, so that a frame's own work can be told from time it
/// waited for a core that other processes held.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if ok {
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    } else {
        Duration::ZERO
    }
}

/// One phase of `--suite`: what each frame's input is, and what changes before it.
enum Phase {
    /// Key presses, one a frame.
    Keys(Key),
    /// The mouse wheel over the list, one notch a frame.
    Scroll,
    /// Text typed into the search field one character a frame, then erased.
    Search(&'static str),
    /// The status filter set to the next value every `every` frames.
    StatusFilter { every: usize },
    /// The sort order set to the next one every `every` frames.
    Sort { every: usize },
}

/// `--suite`: the phases in the module doc, 60 frames a second, on a project opened through the
/// window's own File > Open path (a worker thread).
fn run_suite(
    project: &std::path::Path,
    gpu: bool,
    raster: bool,
    frames: usize,
) -> anyhow::Result<()> {
    use egui::accesskit::Role;
    use egui_kittest::kittest::Queryable;
    use roiscope::app::browser::SortBy;
    use roiscope::data::store::ReviewStatus;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let gpu = if gpu { Some(Gpu::new(raster)?) } else { None };
    let upload_time = Rc::new(Cell::new(Duration::ZERO));
    let mut builder = Harness::builder().with_size(Vec2::from(WINDOW));
    if let Some(g) = &gpu {
        builder = builder.renderer(Upload {
            state: g.state.clone(),
            spent: upload_time.clone(),
        });
    }
    let mut h = builder.build_ui_state(
        |ui, wb: &mut Workbench| wb.ui(ui),
        Workbench::new(Settings::default()),
    );
    let pace = Duration::from_secs_f64(1.0 / 60.0);
    let mut over_all = 0;
    let mut report = |name: &str, times: &[FrameTime], extra: String| {
        let cpu: Vec<Duration> = times.iter().map(FrameTime::cpu).collect();
        let on_cpu: Vec<Duration> = times.iter().map(|t| t.on_cpu).collect();
        let over = cpu.iter().filter(|t| **t > BUDGET).count();
        let over_on_cpu = on_cpu.iter().filter(|t| **t > BUDGET).count();
        over_all += over_on_cpu;
        println!("{name}: {} frames{extra}", times.len());
        println!("  frame CPU  {}", summary(cpu));
        println!("  on-CPU     {}", summary(on_cpu));
        println!(
            "  over {} ms: {over} by the clock, {over_on_cpu} on the CPU",
            BUDGET.as_millis()
        );
    };

    // Open: File > Open's command, frames at 60 Hz until the project is read and listed.
    let open_start = Instant::now();
    h.state_mut()
        .commands
        .push(roiscope::app::Command::OpenProject(project.to_path_buf()));
    let mut times = Vec::new();
    loop {
        let t = Instant::now();
        times.push(frame(&mut h, gpu.as_ref(), &upload_time, Vec::new()));
        let wb = h.state();
        let listed = wb.project.is_some()
            && wb.opening.is_none()
            && wb.browser.view.is_current(
                &wb.browser.filters,
                wb.browser.sort,
                wb.rows_generation(),
            );
        if listed || open_start.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(pace.saturating_sub(t.elapsed()));
    }
    let records = h.state().rows.len();
    anyhow::ensure!(
        records > 0,
        "the project did not open: {:?}",
        h.state().message
    );
    report(
        "open (File > Open, read on a worker)",
        &times,
        format!(
            ", {records} records read and listed in {:.2} s",
            open_start.elapsed().as_secs_f64()
        ),
    );

    let phases: Vec<(String, Phase, Option<SortBy>, usize)> = vec![
        (
            "flip (J), by id".into(),
            Phase::Keys(Key::J),
            Some(SortBy::Id),
            frames,
        ),
        (
            "flip (J), sorted by diagnosis".into(),
            Phase::Keys(Key::J),
            Some(SortBy::Diagnosis),
            frames,
        ),
        (
            "wheel-scroll the list, sorted by diagnosis".into(),
            Phase::Scroll,
            None,
            frames,
        ),
        (
            "type a search, one character a frame, then erase it".into(),
            Phase::Search("finding 1234"),
            None,
            24,
        ),
        (
            "status filter changed every 30 frames".into(),
            Phase::StatusFilter { every: 30 },
            None,
            300,
        ),
        (
            "sort changed every 30 frames".into(),
            Phase::Sort { every: 30 },
            None,
            240,
        ),
    ];
    for (name, phase, sort, n) in phases {
        if let Some(sort) = sort {
            h.state_mut().browser.sort = sort;
            // Settle: the new order computed before the phase starts.
            let settle = Instant::now();
            loop {
                frame(&mut h, gpu.as_ref(), &upload_time, Vec::new());
                let wb = h.state();
                if wb.browser.view.is_current(
                    &wb.browser.filters,
                    wb.browser.sort,
                    wb.rows_generation(),
                ) || settle.elapsed() > Duration::from_secs(30)
                {
                    break;
                }
                std::thread::sleep(pace);
            }
        }
        let list = egui::pos2(150.0, 500.0);
        if let Phase::Search(_) = phase {
            h.get_by_role_and_label(Role::TextInput, "Search").focus();
            frame(&mut h, gpu.as_ref(), &upload_time, Vec::new());
        }
        let mut times = Vec::new();
        // For filter and sort changes: frames from each change until the list was current.
        let mut latencies = Vec::new();
        let mut changed_at: Option<Instant> = None;
        let run = Instant::now();
        let statuses: Vec<Option<ReviewStatus>> = std::iter::once(None)
            .chain(ReviewStatus::ALL.map(Some))
            .collect();
        let sorts = SortBy::ALL.map(|(s, _)| s);
        for i in 0..n {
            let events = match &phase {
                Phase::Keys(k) => key_events(*k),
                Phase::Scroll => vec![
                    Event::PointerMoved(list),
                    Event::MouseWheel {
                        unit: egui::MouseWheelUnit::Line,
                        delta: Vec2::new(0.0, -3.0),
                        modifiers: Modifiers::NONE,
                        phase: egui::TouchPhase::Move,
                        source: egui::MouseWheelSource::Unknown,
                    },
                ],
                Phase::Search(text) => {
                    let half = n / 2;
                    if i < half {
                        text.chars()
                            .nth(i)
                            .map(|c| vec![Event::Text(c.to_string())])
                            .unwrap_or_default()
                    } else {
                        key_events(Key::Backspace)
                    }
                }
                Phase::StatusFilter { every } => {
                    if i % every == 0 {
                        h.state_mut().browser.filters.status =
                            statuses[(i / every + 1) % statuses.len()];
                        changed_at = Some(Instant::now());
                    }
                    Vec::new()
                }
                Phase::Sort { every } => {
                    if i % every == 0 {
                        h.state_mut().browser.sort = sorts[(i / every + 1) % sorts.len()];
                        changed_at = Some(Instant::now());
                    }
                    Vec::new()
                }
            };
            times.push(frame(&mut h, gpu.as_ref(), &upload_time, events));
            let wb = h.state();
            if changed_at.is_some()
                && wb.browser.view.is_current(
                    &wb.browser.filters,
                    wb.browser.sort,
                    wb.rows_generation(),
                )
            {
                latencies.push(changed_at.take().unwrap().elapsed());
            }
            let next = pace * (i as u32 + 1);
            if let Some(rest) = next.checked_sub(run.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let extra = if latencies.is_empty() {
            String::new()
        } else {
            format!("; the new list on screen after: {}", summary(latencies))
        };
        report(&name, &times, extra);
        if let Phase::Search(_) = phase {
            h.key_press(Key::Escape);
            h.state_mut().browser.filters.text.clear();
        }
    }
    h.state_mut().browser.filters = Default::default();
    if over_all > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn current_ready(wb: &Workbench) -> bool {
    use roiscope::app::images::{ImageKey, Slot};
    let (Some(project), Some(record)) = (&wb.project, &wb.record) else {
        return false;
    };
    let key = ImageKey {
        path: project.image_path(record),
        thumb: false,
    };
    // Peek: asking through `get` would count as a use and change what the cache keeps.
    matches!(
        wb.images.peek(&key),
        Some(Slot::Ready(_)) | Some(Slot::Failed(_))
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:5.1} ms  p95 {:5.1} ms  p99 {:5.1} ms  max {:5.1} ms",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(at(0.99)),
        ms(at(1.0))
    )
}

/// A wgpu device (a software rasteriser where there is no GPU, as on this machine) with egui's
/// renderer, drawing into an off-screen target of the window's size.
struct Gpu {
    state: RenderState,
    draw: bool,
    target: wgpu::TextureView,
    screen: ScreenDescriptor,
}

impl Gpu {
    fn new(draw: bool) -> anyhow::Result<Gpu> {
        let setup = egui_wgpu::WgpuSetup::without_display_handle();
        let instance = block_on(setup.new_instance());
        let config = egui_wgpu::WgpuConfiguration {
            wgpu_setup: setup,
            ..Default::default()
        };
        let state = block_on(RenderState::create(
            &config,
            &instance,
            None,
            egui_wgpu::RendererOptions::default(),
        ))
        .map_err(|e| anyhow::anyhow!("no wgpu device: {e} (run with --no-gpu)"))?;
        let screen = ScreenDescriptor {
            size_in_pixels: WINDOW.map(|v| v as u32),
            pixels_per_point: 1.0,
        };
        let target = state
            .device
            .create_texture(&wgpu::TextureDescriptor {
                label: Some("workbench_flip target"),
                size: wgpu::Extent3d {
                    width: screen.size_in_pixels[0],
                    height: screen.size_in_pixels[1],
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: state.target_format,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            })
            .create_view(&wgpu::TextureViewDescriptor::default());
        Ok(Gpu {
            state,
            draw,
            target,
            screen,
        })
    }

    /// Tessellates the frame's shapes, uploads the vertices, records and submits the draw (the
    /// CPU side, returned first), then waits for the device (second). Without `draw` the
    /// render pass is left out, so the wait is for the copies alone.
    fn paint(&self, ctx: &egui::Context, output: &egui::FullOutput) -> (Duration, Duration) {
        let t = Instant::now();
        let jobs = ctx.tessellate(output.shapes.clone(), output.pixels_per_point);
        let device = &self.state.device;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("workbench_flip frame"),
        });
        let mut renderer = self.state.renderer.write();
        let extra =
            renderer.update_buffers(device, &self.state.queue, &mut encoder, &jobs, &self.screen);
        if self.draw {
            let mut pass = encoder
                .begin_render_pass(&wgpu::RenderPassDescriptor {
                    label: Some("workbench_flip pass"),
                    color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                        view: &self.target,
                        resolve_target: None,
                        depth_slice: None,
                        ops: wgpu::Operations {
                            load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                            store: wgpu::StoreOp::Store,
                        },
                    })],
                    ..Default::default()
                })
                .forget_lifetime();
            renderer.render(&mut pass, &jobs, &self.screen);
        }
        self.state
            .queue
            .submit(extra.into_iter().chain([encoder.finish()]));
        let cpu = t.elapsed();
        let t = Instant::now();
        let _ = device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(Duration::from_secs(10)),
        });
        (cpu, t.elapsed())
    }
}

/// The harness's renderer: writes each frame's texture changes to the GPU and keeps the time.
struct Upload {
    state: RenderState,
    spent: Rc<Cell<Duration>>,
}

impl TestRenderer for Upload {
    fn handle_delta(&mut self, delta: &mut TexturesDelta) {
        let t = Instant::now();
        let mut renderer = self.state.renderer.write();
        for (id, images) in delta.set.drain() {
            for image in &images {
                renderer.update_texture(&self.state.device, &self.state.queue, id, image);
            }
        }
        for id in delta.free.drain() {
            renderer.free_texture(&id);
        }
        self.spent.set(self.spent.get() + t.elapsed());
    }
}

/// Runs a future to completion on this thread (wgpu's set-up calls are async).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
