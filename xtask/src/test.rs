//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.
//! `--repeat N` runs the privileged suites N times and reports failures per test.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, BufRead as _, BufReader, Write as _},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{build, cmd, setup};

/// The package holding the privileged suites (root, BPF, network namespaces).
const PRIVILEGED_PACKAGE: &str = "kproxy-testbed";

fn stage(n: usize, total: usize, what: &str) {
    println!("\n==> [{n}/{total}] {what}");
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    build::with_ebpf_object(&mut cmd);
    cmd
}

/// Runs every stage once; with `repeat`, the privileged suites that many times.
pub fn run(repeat: Option<u32>) -> anyhow::Result<()> {
    const TOTAL: usize = 7;
    stage(1, TOTAL, "setup");
    setup::run()?;

    stage(2, TOTAL, "build");
    build::all()?;

    stage(3, TOTAL, "cargo fmt --check");
    cmd::run(&mut cargo(&["fmt", "--all", "--check"]))?;

    stage(4, TOTAL, "clippy (userspace crates, warnings denied)");
    cmd::run(&mut cargo(&[
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "kproxy-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    stage(
        5,
        TOTAL,
        "clippy (kproxy-ebpf on nightly for its target, warnings denied)",
    );
    cmd::run(
        cmd::nightly_cargo()
            .args([
                "clippy",
                "--package",
                "kproxy-ebpf",
                "--release",
                "--target",
                build::EBPF_TARGET,
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    )?;

    stage(6, TOTAL, "unit tests");
    cmd::run(&mut cargo(&[
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "kproxy-ebpf",
        "--exclude",
        PRIVILEGED_PACKAGE,
    ]))?;

    stage(
        7,
        TOTAL,
        "privileged suites (root: BPF programs, network namespaces)",
    );
    match repeat {
        None => cmd::run(&mut privileged_suites(&[]))?,
        Some(runs) => repeat_privileged_suites(runs)?,
    }

    println!("\nall stages passed");
    Ok(())
}

/// The privileged suites, serial: they share kernel state (bpffs, iptables), so one at a
/// time. `extra` goes to cargo before the test binaries' arguments.
fn privileged_suites(extra: &[&str]) -> Command {
    let mut command = cargo(&["test", "--release", "--package", PRIVILEGED_PACKAGE]);
    command.args(extra).args(["--", "--test-threads=1"]);
    command
}

/// Runs the privileged suites `runs` times (every suite each time, past failures), then
/// reports how often each test failed; an error when any did.
fn repeat_privileged_suites(runs: u32) -> anyhow::Result<()> {
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    for run in 1..=runs {
        println!("\n--> privileged suites, run {run}/{runs}");
        for test in failed_tests(privileged_suites(&["--no-fail-fast"]))? {
            *failures.entry(test).or_default() += 1;
        }
    }
    println!("\n==> privileged suites: failures per test in {runs} runs");
    if failures.is_empty() {
        println!("none");
        return Ok(());
    }
    for (test, failed) in &failures {
        println!("{failed}/{runs}  {test}");
    }
    bail!("{} tests failed at least once in {runs} runs", failures.len())
}

/// Runs `command` (a `cargo test`) with its output and errors streamed to stdout, and
/// returns the tests that failed; a failed run that names none counts as one failure
/// of its own.
fn failed_tests(mut command: Command) -> anyhow::Result<BTreeSet<String>> {
    let (reader, writer) = io::pipe().context("pipe for the test output")?;
    command.stdout(writer.try_clone()?).stderr(writer);
    let mut child = command.spawn().context("start cargo test")?;
    // The command holds the pipe's write ends: close them so the read ends with the child.
    drop(command);
    let mut log = FailureLog::default();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut out = io::stdout();
    while reader.read_until(b'\n', &mut line)? > 0 {
        out.write_all(&line)?;
        log.read(&String::from_utf8_lossy(&line));
        line.clear();
    }
    let status = child.wait()?;
    let mut failed = log.failed;
    if !status.success() && failed.is_empty() {
        failed.insert(format!("(a run that named no failing test: cargo test {status})"));
    }
    Ok(failed)
}

/// The failed tests named in `cargo test` output, as `SUITE: TEST` (SUITE from cargo's
/// `Running` line): libtest's `test TEST ... FAILED` lines and its closing `failures:`
/// list, which still names a test whose result line a child process's output broke.
#[derive(Default)]
struct FailureLog {
    suite: String,
    in_failure_list: bool,
    failed: BTreeSet<String>,
}

impl FailureLog {
    fn read(&mut self, line: &str) {
        let line = line.trim_end();
        let trimmed = line.trim_start();
        if let Some(suite) = trimmed
            .strip_prefix("Running ")
            .or_else(|| trimmed.strip_prefix("Doc-tests "))
        {
            self.suite = suite.split(" (").next().unwrap_or(suite).to_string();
        }
        let listed = match line.strip_prefix("    ") {
            Some(test) if self.in_failure_list && !test.is_empty() && !test.contains(' ') => Some(test),
            _ => None,
        };
        self.in_failure_list = listed.is_some() || line == "failures:";
        let result = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"));
        if let Some(test) = listed.or(result) {
            self.failed.insert(format!("{}: {test}", self.suite));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_per_suite_once() {
        let output = "\
     Running tests/counters.rs (target/release/deps/counters-0a1b)

running 2 tests
test attached_to_veth_counts_real_packets ... FAILED
test programs_pass_the_verifier ... ok

failures:

---- attached_to_veth_counts_real_packets stdout ----
    indented output, not a list

failures:
    attached_to_veth_counts_real_packets

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
     Running tests/e2e.rs (target/release/deps/e2e-2c3d)

running 2 tests
test ebpf::serves ... agent output on the inherited stdout
FAILED
test ebpf::scales ... ok

failures:
    ebpf::serves

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
";
        let mut log = FailureLog::default();
        for line in output.lines() {
            log.read(line);
        }
        let expected: BTreeSet<String> = [
            "tests/counters.rs: attached_to_veth_counts_real_packets",
            "tests/e2e.rs: ebpf::serves",
        ]
        .map(String::from)
        .into();
        assert_eq!(log.failed, expected);
    }
}
