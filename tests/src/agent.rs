//! Running the real `kproxy` binary inside a test's node namespace.
//!
//! The agent is started with `nsenter --net=…` (only the network namespace: `ip netns
//! exec` would also remount /sys and hide /sys/fs/bpf, losing the pins), its output goes
//! to a log file the test can read, and it is stopped with SIGTERM when dropped.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, unique_name};

/// The `kproxy` binary under test: `$KPROXY_BIN`, or the workspace's release build
/// (which `cargo xtask test` builds before the suites run).
pub fn kproxy_bin() -> PathBuf {
    let path = std::env::var_os("KPROXY_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/kproxy"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask build` first (or set KPROXY_BIN)",
        path.display()
    );
    path
}

/// A `kproxy ARGS` command that runs in `ns`'s network namespace only.
pub fn kproxy_in(ns: &NetNs, args: &[impl AsRef<OsStr>]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(kproxy_bin())
        .args(args);
    cmd
}

/// Runs `kproxy ARGS` in `ns` to completion.
pub fn run_kproxy(ns: &NetNs, args: &[&str]) -> Output {
    kproxy_in(ns, args).output().expect("start kproxy via nsenter")
}

/// A running `kproxy run`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// Starts `kproxy ARGS` in `ns` with debug logging into a temporary log file.
    pub fn start(ns: &NetNs, args: &[impl AsRef<OsStr>]) -> Self {
        Self::start_logging(ns, args, "debug")
    }

    /// Starts `kproxy ARGS` in `ns` logging at `filter` (`RUST_LOG`) into a temporary log file.
    pub fn start_logging(ns: &NetNs, args: &[impl AsRef<OsStr>], filter: &str) -> Self {
        let log = std::env::temp_dir().join(format!("kproxy-agent-{}.log", unique_name("log")));
        let file = fs::File::create(&log).expect("create agent log");
        let child = kproxy_in(ns, args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::from(file.try_clone().expect("dup log fd")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start kproxy run");
        Agent {
            child: Some(child),
            log,
        }
    }

    /// The agent's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until the log contains `needle` at least `count` times, panicking with the
    /// log after `timeout` or if the agent exits.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited ({status}) before logging {needle:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "agent did not log {needle:?} x{count} within {timeout:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's process id while it runs (nsenter execs kproxy, so it is kproxy's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process has exited.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Sends SIGTERM and waits for the agent to exit; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // nsenter execs kproxy, so the child's pid is the agent's.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("agent log kept at {}", self.log.display());
        } else {
            let _ = fs::remove_file(&self.log);
        }
    }
}
