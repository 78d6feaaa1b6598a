//! A cgroup v2 directory owned by a test, for the socket-LB programs: created under the
//! cgroup2 mount found in /proc/mounts, holding only the processes the test puts there,
//! emptied (`cgroup.kill`) and removed when dropped, on failure too. Tests never attach
//! to a cgroup that holds other processes.
//!
//! cgroup v2 moves whole processes, so a client in the cgroup is a child process:
//! [`TestCgroup::probe`] runs the test bed's `kproxy-probe` there, inside a namespace.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, unique_name};

/// How long a probe may run before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A cgroup created for a test, removed (with its processes killed) when dropped.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `kproxy-test-{unique}` under the cgroup2 mount.
    pub fn new(tag: &str) -> Self {
        let root = kproxy::ebpf::attach::cgroup::cgroup2_root()
            .expect("read /proc/mounts")
            .expect("no cgroup2 mount in /proc/mounts: the socket-LB tests need cgroup v2");
        let path = root.join(format!("kproxy-test-{}", unique_name(tag)));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// The cgroup's directory (what `kproxy run --cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `--cgroup PATH` for `kproxy run`.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// A command that runs `kproxy-probe ARGS` in `ns`'s network namespace, as a process
    /// of this cgroup (it moves itself in before `exec`).
    pub fn probe_command(&self, ns: &NetNs, args: &[&str]) -> Command {
        in_cgroup(&self.path, ns, args)
    }

    /// Runs `kproxy-probe ARGS` in `ns` inside this cgroup; its stdout, or its stderr as
    /// the error (killed after a bounded time).
    pub fn probe(&self, ns: &NetNs, args: &[&str]) -> Result<String, String> {
        run_probe(self.probe_command(ns, args))
    }
}

/// The value of `key=` in each line of a `kproxy-probe` output.
pub fn probe_field(out: &str, key: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .map(String::from)
        })
        .collect()
}

/// Runs `kproxy-probe ARGS` in `ns`, in the test process's own cgroup (not a test
/// cgroup: the socket programs must leave it alone).
pub fn probe_outside(ns: &NetNs, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(probe_bin())
        .args(args);
    run_probe(cmd)
}

fn in_cgroup(cgroup: &Path, ns: &NetNs, args: &[&str]) -> Command {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(probe_bin())
        .args(args);
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close)
    // on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd
}

fn run_probe(mut cmd: Command) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start kproxy-probe: {e}"));
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait for kproxy-probe");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kproxy-probe {:?}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The test bed's `kproxy-probe` binary: `$KPROXY_PROBE_BIN`, or beside the running
/// test's own directory (cargo builds the package's binaries before its tests).
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KPROXY_PROBE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidates = [exe.parent(), exe.parent().and_then(Path::parent)];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("kproxy-probe"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/kproxy-probe"))
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Best effort, bounded: a panic in drop would hide the test's own failure.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}
