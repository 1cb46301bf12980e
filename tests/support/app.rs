//! Driving the workbench in egui_kittest tests: frames until a condition holds.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use roiscope::app::Workbench;

/// Runs frames until `done` holds, failing after `limit` with the window's message and the
/// training state; returns the slowest frame.
pub fn step_until(
    h: &mut Harness<'static, Workbench>,
    what: &str,
    limit: Duration,
    done: impl Fn(&Workbench) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    while !done(h.state()) {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}: message {:?}, training {:?}",
            h.state().message,
            h.state().training.state
        );
        let t = Instant::now();
        h.step();
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    slowest
}
