//! The machine's CPUs: pinning load threads, the quiet gate before each run, and how
//! much CPU other people's processes took during it (this machine is shared).

use std::{fs, thread, time::Duration, time::Instant};

use nix::{sched::CpuSet, unistd::Pid};

/// The client runs here; servers on [`SERVER_CPU`] (the baseline's placement).
pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;

/// Pins the calling thread to `cpu` (no-op on a one-CPU machine).
pub fn pin_current_thread(cpu: usize) {
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut set = CpuSet::new();
    if set.set(cpu % cpus).is_ok() {
        // Best effort: an unpinned run is noisier, not wrong.
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &set);
    }
}

/// Jiffies from the first line of /proc/stat.
#[derive(Clone, Copy, Debug, Default)]
struct SystemTimes {
    user: u64,
    busy: u64,
    total: u64,
}

fn system_times() -> SystemTimes {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = (0..8).map(get).sum();
    SystemTimes {
        user: get(0) + get(1),
        busy: total - get(3) - get(4),
        total,
    }
}

/// User CPU jiffies of process `pid` (all its threads).
fn process_user_jiffies(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime is field 14 overall.
    text.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(11))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// The quiet gate: waits up to `max_wait` for a `window` with the machine under
/// `threshold` busy. Returns the last window's busy fraction (under the threshold when
/// the gate passed).
pub fn quiet_gate(max_wait: Duration, window: Duration, threshold: f64) -> f64 {
    let deadline = Instant::now() + max_wait;
    loop {
        let before = system_times();
        thread::sleep(window);
        let after = system_times();
        let total = after.total.saturating_sub(before.total).max(1);
        let busy = after.busy.saturating_sub(before.busy) as f64 / total as f64;
        if busy < threshold || Instant::now() >= deadline || crate::signals::interrupted() {
            return busy;
        }
    }
}

/// Measures the user CPU that processes other than ours (the bench and the agent)
/// took while a run lasted, as a fraction of the whole machine.
pub struct ForeignMeter {
    ours: Vec<u32>,
    system: SystemTimes,
    own_user: u64,
}

impl ForeignMeter {
    /// Starts metering; `also_ours` are further processes of the bench (the agent).
    pub fn start(also_ours: &[u32]) -> Self {
        let mut ours = vec![std::process::id()];
        ours.extend_from_slice(also_ours);
        let own_user = ours.iter().map(|&p| process_user_jiffies(p)).sum();
        ForeignMeter {
            ours,
            system: system_times(),
            own_user,
        }
    }

    /// Foreign user CPU since `start`, 0.0–1.0 of all CPUs.
    pub fn foreign_fraction(&self) -> f64 {
        let now = system_times();
        let own_now: u64 = self.ours.iter().map(|&p| process_user_jiffies(p)).sum();
        let total = now.total.saturating_sub(self.system.total).max(1);
        let user = now.user.saturating_sub(self.system.user);
        let own = own_now.saturating_sub(self.own_user);
        user.saturating_sub(own) as f64 / total as f64
    }
}
