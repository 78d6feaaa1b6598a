//! The demo (`cargo xtask demo --once`, what `cargo xtask run` shows) works end to end
//! in both modes and leaves nothing behind.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kproxy_testbed::agent::kproxy_bin;

const PODS: [&str; 2] = ["hello-app-58d97c88d4-h7s2n", "hello-app-58d97c88d4-pkh8c"];

/// Asserts that the demo run by process `pid` left no namespace and no pin directory.
fn assert_nothing_left(pid: u32) {
    // Its namespaces and interfaces carry its pid: `kpv{pid}x…`.
    let pid_tag = pid % 1_000_000;
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !left.contains(&format!("{pid_tag}x")),
        "demo left namespaces behind:\n{left}"
    );
    // One pin directory per node: `kproxy-demo-{pid}` or `kproxy-demo-{pid}-host1`.
    let ours = format!("kproxy-demo-{pid_tag}");
    let pins_left: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .expect("read /sys/fs/bpf")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| *name == ours || name.starts_with(&format!("{ours}-")))
        .collect();
    assert!(pins_left.is_empty(), "demo left its pins: {pins_left:?}");
}

fn demo(mode: &str, xdp: bool, two_nodes: bool) {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy-demo"))
        .args(["--once", "--mode", mode, "--requests", "30", "--examples"])
        .arg(&examples)
        .args(xdp.then_some("--xdp"))
        .args(two_nodes.then_some("--two-nodes"))
        .env("KPROXY_BIN", kproxy_bin())
        .output()
        .expect("run kproxy-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(!stdout.contains("(no answer)"), "{stdout}");
    let host2 = two_nodes.then_some("to the NodePort 192.168.77.11:30811");
    for section in [
        "to the ClusterIP 10.104.81.240:80",
        "to the NodePort 192.168.77.10:30811",
    ]
    .into_iter()
    .chain(host2)
    {
        let start = stdout
            .find(section)
            .unwrap_or_else(|| panic!("no {section:?} section:\n{stdout}"));
        let body: String = stdout[start..]
            .lines()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join("\n");
        for pod in PODS {
            assert!(body.contains(pod), "{pod} got no request {section}:\n{body}");
        }
    }
    assert!(
        stdout.contains("statistic mode random probability 0.50000000000"),
        "{stdout}"
    );
    let programmed = if mode == "ebpf" {
        "nodeport *:30811/tcp  node_port"
    } else {
        "KUBE-SEP-7I3URQ2O437FVP5U"
    };
    assert!(stdout.contains(programmed), "{stdout}");
    if xdp {
        assert!(
            stdout.contains("native (driver) mode"),
            "XDP mode not shown:\n{stdout}"
        );
        assert!(stdout.contains("XDP on kpe"), "XDP counts not shown:\n{stdout}");
        assert!(
            !stdout.contains("translated 0 packets"),
            "XDP translated nothing:\n{stdout}"
        );
    }

    let pid_tag: u32 = stdout
        .split("(veth kpv")
        .nth(1)
        .and_then(|s| s.split('x').next())
        .and_then(|s| s.parse().ok())
        .expect("veth names shown");
    assert_nothing_left(pid_tag);
}

/// Closing the terminal that runs the demo (SIGHUP) removes everything it made, as
/// Ctrl-C does.
#[test]
fn demo_cleans_up_on_sighup() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kproxy-demo"))
        .args(["--requests", "4", "--examples"])
        .arg(&examples)
        .env("KPROXY_BIN", kproxy_bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kproxy-demo");
    let pid = child.id();
    let stdout = child.stdout.take().expect("demo stdout");
    // Read its output to the end (a closed pipe would fail its cleanup's prints), and
    // say when it waits.
    let (waiting, waits) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("press Ctrl-C to remove it") {
                let _ = waiting.send(());
            }
        }
    });
    assert!(
        waits.recv_timeout(Duration::from_secs(90)).is_ok(),
        "the demo did not reach its waiting state"
    );
    let pid_t = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGHUP).expect("send SIGHUP");
    let deadline = Instant::now() + Duration::from_mins(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not exit within 60 s of SIGHUP");
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "demo exit after SIGHUP: {status}");
    reader.join().expect("output reader");
    assert_nothing_left(pid);
}

#[test]
fn demo_in_ebpf_mode() {
    demo("ebpf", false, false);
}

#[test]
fn demo_in_ebpf_mode_with_xdp() {
    demo("ebpf", true, false);
}

#[test]
fn demo_in_iptables_mode() {
    demo("iptables", false, false);
}

#[test]
fn demo_on_two_nodes_in_iptables_mode() {
    demo("iptables", false, true);
}

#[test]
fn demo_on_two_nodes_in_ebpf_mode() {
    demo("ebpf", false, true);
}
