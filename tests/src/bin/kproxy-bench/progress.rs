//! The progress line: what runs now, and how long the rest should take (the plan's
//! estimate, scaled by how fast the run has gone against its estimate so far).

use std::time::{Duration, Instant};

pub struct Progress {
    started: Instant,
    total_estimate: f64,
    done_estimate: f64,
    step: usize,
}

fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

impl Progress {
    pub fn new(total_estimate: Duration) -> Self {
        Progress {
            started: Instant::now(),
            total_estimate: total_estimate.as_secs_f64(),
            done_estimate: 0.0,
            step: 0,
        }
    }

    /// Announces a step expected to take `estimate`, and counts it as done.
    pub fn step(&mut self, what: &str, estimate: Duration) {
        self.step += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let remaining = (self.total_estimate - self.done_estimate).max(0.0);
        // Early on the estimate alone is the best guess; later, the observed pace.
        let pace = if self.done_estimate > 10.0 {
            (elapsed / self.done_estimate).clamp(0.5, 3.0)
        } else {
            1.0
        };
        eprintln!(
            "[bench {:>3}] {what:<58} {} elapsed, ~{} left",
            self.step,
            clock(elapsed),
            clock(remaining * pace)
        );
        self.done_estimate += estimate.as_secs_f64();
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
