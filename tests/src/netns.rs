//! Network namespaces and veth links owned by a test.

use std::{
    fs::{self, File},
    io::Write as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use nix::sched::{CloneFlags, setns};

/// Runs `command`, panicking with what it was (`what`) and its stderr when it fails.
fn run_checked(mut command: Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("start `{what}`: {e} (installed? `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "`{what}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip ARGS`, panicking with the command and its stderr when it fails.
pub fn ip(args: &[&str]) {
    let mut command = Command::new("ip");
    command.args(args);
    run_checked(command, &format!("ip {}", args.join(" ")));
}

/// A short name unique to this process and call: `{tag}{pid}x{n}`, at most 15 bytes
/// (the kernel's interface name limit) for tags of up to 4 bytes.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    assert!(tag.len() <= 4, "tag {tag:?} too long for an interface name");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 1_000_000)
}

/// A network namespace created for a test and deleted when dropped (with every
/// interface inside it).
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `kp-{unique}` with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("kp-{}", unique_name(tag));
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Runs `ethtool ARGS` inside this namespace, panicking with its stderr when it fails.
    pub fn ethtool(&self, args: &[&str]) {
        self.exec("ethtool", args);
    }

    /// Runs `PROGRAM ARGS` inside this namespace (`ip netns exec`), panicking with its
    /// stderr when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]).args(args);
        run_checked(
            command,
            &format!("{program} {} (in {})", args.join(" "), self.name),
        );
    }

    /// Runs `PROGRAM ARGS` inside this namespace with `stdin` as its input and returns
    /// its output, panicking with its stderr when it fails.
    pub fn exec_with_input(&self, program: &str, args: &[&str], stdin: &str) -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "`{program} {}` (in {}) failed: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs `f` on a thread that has entered only this network namespace (not the
    /// mount namespace, so /sys/fs/bpf stays visible), and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns({path}): {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets sysctl `key` (dotted, as `sysctl` spells it: `net.ipv4.ip_forward`) to `value`
    /// in this namespace and checks it took.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| {
            // /proc/sys/net belongs to the namespace of the thread that opens it.
            fs::write(&path, value).unwrap_or_else(|e| panic!("write {path} in {}: {e}", self.name));
            let now = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
            assert_eq!(
                now.trim(),
                value,
                "{key} did not switch to {value} in {}",
                self.name
            );
        });
    }

    /// Switches IPv6 off in this namespace, for interfaces made later too: a link that
    /// comes up then sends no neighbour discovery, MLD reports or router solicitations.
    pub fn disable_ipv6(&self) {
        self.run(|| {
            for conf in ["all", "default"] {
                // /proc/sys/net belongs to the namespace of the thread that opens it.
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                fs::write(&path, "1").unwrap_or_else(|e| panic!("write {path}: {e}"));
            }
        });
    }

    /// The MAC address of `iface` inside this namespace, as `ip` spells it.
    pub fn mac(&self, iface: &str) -> String {
        self.run(|| {
            let mac = nix::ifaddrs::getifaddrs()
                .expect("getifaddrs")
                .filter(|a| a.interface_name == iface)
                .find_map(|a| a.address?.as_link_addr()?.addr())
                .unwrap_or_else(|| panic!("no MAC address on {iface} in {}", self.name));
            mac.map(|b| format!("{b:02x}")).join(":")
        })
    }

    /// The ifindex of `iface` inside this namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let iface = iface.to_string();
        self.run(move || {
            nix::net::if_::if_nametoindex(iface.as_str())
                .unwrap_or_else(|e| panic!("if_nametoindex({iface}): {e}"))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Best effort: a panic in drop would hide the test's own failure.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins `a` and `b` with a veth pair named `a_if`/`b_if`, gives each end its
/// address (CIDR) and brings both up.
pub fn veth_pair(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}
