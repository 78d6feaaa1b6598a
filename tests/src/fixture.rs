//! The packet-fixture harness, after Katran's testing framework: a [`Case`] seeds the
//! maps of a freshly loaded datapath, runs its [`Step`]s through one [`Hook`] with
//! BPF_PROG_TEST_RUN, checks every verdict and output frame byte for byte (and the
//! checksums of every rewritten frame, summed independently of the datapath), then hands
//! the maps and outputs to the case's side-effect check. [`Flow`] and [`handshake`]
//! build the steps of a translated connection; the tables of cases live in the suites.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use aya::programs::Program;
use kproxy::ebpf::{self, BackendId, DatapathMaps, Frontend, FrontendId, FrontendOptions, ktime_now_ns};
use kproxy_common::{
    CtEntry, CtKey,
    byteorder::{be_addr, be_port},
    conntrack::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_ST_ESTABLISHED},
    lb::PROTO_TCP,
};

use crate::{
    forwarding::event,
    packet::{SYN, SYN_ACK, Tcp, assert_checksums_valid, tcp, udp},
    pins::PinDir,
    prog_test_run,
};

/// An entry point under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
    /// TC egress: the reply path only (its own table, `egress_fixtures`).
    TcEgress,
}

/// The ingress entry points: the full-datapath tables run against each.
pub const HOOKS: [Hook; 2] = [Hook::Tc, Hook::Xdp];

/// What the program decides, independent of the hook's return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the stack (translated or untouched): TC_ACT_OK / XDP_PASS.
    Pass,
    /// TC_ACT_SHOT / XDP_DROP.
    Drop,
    /// XDP only: sent to the next hop's interface (XDP_REDIRECT).
    Redirect,
    /// Answered with the output frame (ICMP port unreachable) out the interface it came
    /// in on: TC_ACT_REDIRECT. XDP leaves the answer to TC: XDP_PASS, frame untouched.
    Reject,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::Tc => ebpf::TC_INGRESS_PROGRAM,
            Hook::Xdp => ebpf::XDP_PROGRAM,
            Hook::TcEgress => ebpf::TC_EGRESS_PROGRAM,
        }
    }

    /// The hook's return code for `v`.
    pub fn code(self, v: Verdict) -> u32 {
        const TC_ACT_OK: u32 = 0;
        const TC_ACT_SHOT: u32 = 2;
        const TC_ACT_REDIRECT: u32 = 7;
        const XDP_DROP: u32 = 1;
        const XDP_PASS: u32 = 2;
        const XDP_REDIRECT: u32 = 4;
        match (self, v) {
            (Hook::Tc | Hook::TcEgress, Verdict::Pass) => TC_ACT_OK,
            (Hook::Tc | Hook::TcEgress, Verdict::Drop) => TC_ACT_SHOT,
            (Hook::Tc | Hook::TcEgress, Verdict::Redirect) => {
                unreachable!("TC never redirects a translated packet")
            }
            (Hook::Tc, Verdict::Reject) => TC_ACT_REDIRECT,
            (Hook::TcEgress, Verdict::Reject) => unreachable!("TC egress never answers"),
            (Hook::Xdp, Verdict::Pass | Verdict::Reject) => XDP_PASS,
            (Hook::Xdp, Verdict::Drop) => XDP_DROP,
            (Hook::Xdp, Verdict::Redirect) => XDP_REDIRECT,
        }
    }
}

pub fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// What the output packet must be.
#[derive(Clone)]
pub enum Expect {
    /// Byte-identical to the input.
    Unchanged,
    /// Exactly these bytes.
    Exactly(Vec<u8>),
}

/// One packet through the program.
#[derive(Clone)]
pub struct Step {
    pub input: Vec<u8>,
    pub verdict: Verdict,
    pub output: Expect,
}

pub fn step(input: Vec<u8>, verdict: Verdict, output: Expect) -> Step {
    Step {
        input,
        verdict,
        output,
    }
}

/// A packet that is not the datapath's business: passed on byte for byte.
pub fn untouched(input: Vec<u8>) -> Step {
    step(input, Verdict::Pass, Expect::Unchanged)
}

/// One connection through a frontend, as both ends and the wire between them see it:
/// the client dials `frontend`, `backend` answers, and the backend sees the client as
/// `seen_as` (the client itself, or the masquerade address of a hairpin flow).
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub client: SocketAddrV4,
    pub frontend: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub seen_as: SocketAddrV4,
}

impl Flow {
    pub fn new(client: SocketAddrV4, frontend: SocketAddrV4, backend: SocketAddrV4) -> Self {
        Flow {
            client,
            frontend,
            backend,
            seen_as: client,
        }
    }

    /// The same flow with the client's source rewritten to `masquerade`.
    pub fn masqueraded(self, masquerade: SocketAddrV4) -> Self {
        Flow {
            seen_as: masquerade,
            ..self
        }
    }

    /// A client segment to the frontend, passed on translated to the backend.
    pub fn request(&self, flags: Tcp, payload: &[u8]) -> Step {
        step(
            tcp(self.client, self.frontend, flags, payload),
            Verdict::Pass,
            Expect::Exactly(tcp(self.seen_as, self.backend, flags, payload)),
        )
    }

    /// A backend segment to the client, passed on as if from the frontend.
    pub fn reply(&self, flags: Tcp, payload: &[u8]) -> Step {
        step(
            tcp(self.backend, self.seen_as, flags, payload),
            Verdict::Pass,
            Expect::Exactly(tcp(self.frontend, self.client, flags, payload)),
        )
    }

    /// [`Flow::request`] as a UDP datagram.
    pub fn udp_request(&self, payload: &[u8]) -> Step {
        step(
            udp(self.client, self.frontend, payload),
            Verdict::Pass,
            Expect::Exactly(udp(self.seen_as, self.backend, payload)),
        )
    }

    /// [`Flow::reply`] as a UDP datagram.
    pub fn udp_reply(&self, payload: &[u8]) -> Step {
        step(
            udp(self.backend, self.seen_as, payload),
            Verdict::Pass,
            Expect::Exactly(udp(self.frontend, self.client, payload)),
        )
    }
}

/// The opening of a TCP connection through `flow`: the client's SYN and the backend's
/// SYN-ACK, each translated. Cases append the segments that follow.
pub fn handshake(flow: &Flow) -> Vec<Step> {
    vec![flow.request(SYN, b""), flow.reply(SYN_ACK, b"")]
}

pub type Seed = Box<dyn Fn(&mut DatapathMaps)>;
pub type Check = Box<dyn Fn(&DatapathMaps, &[Vec<u8>])>;

/// A fixture: map seeds, packets in order, then side-effect checks (given the outputs).
pub struct Case {
    pub name: &'static str,
    pub seed: Seed,
    pub steps: Vec<Step>,
    pub check: Check,
}

/// No side effects to check beyond the packets.
pub fn none() -> Check {
    Box::new(|_, _| {})
}

pub fn no_conntrack() -> Check {
    Box::new(|m, _| assert!(m.conntrack().unwrap().is_empty(), "conntrack must stay empty"))
}

pub fn seed_service(m: &mut DatapathMaps, f: Frontend, backends: &[BackendId]) -> FrontendId {
    m.upsert_frontend(f, backends, FrontendOptions::default())
        .unwrap()
}

pub fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8, dir: u8) -> CtKey {
    CtKey {
        saddr: be_addr(src.ip().octets()),
        daddr: be_addr(dst.ip().octets()),
        sport: be_port(src.port()),
        dport: be_port(dst.port()),
        proto,
        dir,
        _pad: [0; 2],
    }
}

/// Seeds both conntrack entries of a flow client → frontend → backend last seen `age`
/// ago (established, for TCP).
pub fn seed_flow(
    m: &mut DatapathMaps,
    svc: FrontendId,
    client: SocketAddrV4,
    frontend: SocketAddrV4,
    (bid, backend): (BackendId, SocketAddrV4),
    proto: u8,
    age: Duration,
) {
    let now = ktime_now_ns() - age.as_nanos() as u64;
    let e = CtEntry {
        last_seen_ns: now,
        created_ns: now,
        backend_id: bid.0,
        rev_nat_id: svc.0,
        frontend_addr: be_addr(frontend.ip().octets()),
        backend_addr: be_addr(backend.ip().octets()),
        client_addr: be_addr(client.ip().octets()),
        masq_addr: 0,
        frontend_port: be_port(frontend.port()),
        backend_port: be_port(backend.port()),
        client_port: be_port(client.port()),
        masq_port: be_port(client.port()),
        state: if proto == PROTO_TCP { CT_ST_ESTABLISHED } else { 0 },
        flags: 0,
        _pad: [0; 6],
    };
    m.conntrack_insert(ct_key(client, frontend, proto, CT_DIR_SERVICE), e)
        .unwrap();
    m.conntrack_insert(ct_key(backend, client, proto, CT_DIR_REPLY), e)
        .unwrap();
}

/// Runs `input` through `program` once: (return code, output frame).
pub fn test_run(
    program: &Program,
    input: &[u8],
    ingress_ifindex: Option<u32>,
) -> Result<(u32, Vec<u8>), String> {
    prog_test_run::run(program, input, ingress_ifindex).map(|o| (o.code, o.frame))
}

/// Runs `steps` through `hook`'s program, checking each verdict and output; returns the
/// outputs.
pub fn run_steps(
    program: &Program,
    hook: Hook,
    steps: &[Step],
    ingress_ifindex: Option<u32>,
) -> Result<Vec<Vec<u8>>, String> {
    let mut outputs = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let (code, out) =
            test_run(program, &s.input, ingress_ifindex).map_err(|e| format!("step {i}: {e}"))?;
        if code != hook.code(s.verdict) {
            return Err(format!(
                "step {i}: return code {code} (expected {} = {:?})",
                hook.code(s.verdict),
                s.verdict
            ));
        }
        let untouched =
            matches!(s.output, Expect::Unchanged) || (hook, s.verdict) == (Hook::Xdp, Verdict::Reject);
        let want = match &s.output {
            Expect::Exactly(p) if !untouched => p,
            _ => &s.input,
        };
        if out != *want {
            return Err(format!(
                "step {i}: output differs\n  got      {out:02x?}\n  expected {want:02x?}\n  input    {:02x?}",
                s.input
            ));
        }
        if !untouched {
            catch_unwind(|| assert_checksums_valid(&out)).map_err(|_| format!("step {i}: bad checksum"))?;
        }
        outputs.push(out);
    }
    Ok(outputs)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
        .unwrap_or_else(|| "side-effect check panicked".into())
}

/// Runs `case` through `hook` on a datapath of its own (its own pin directory).
pub fn run_case(case: &Case, hook: Hook) -> Result<(), String> {
    let pins = PinDir::new("fx");
    let mut dp = pins.load();
    (case.seed)(&mut dp.maps);
    let program = dp.ebpf.program(hook.program()).expect("program");
    let outputs = run_steps(program, hook, &case.steps, None)?;
    catch_unwind(AssertUnwindSafe(|| (case.check)(&dp.maps, &outputs))).map_err(panic_text)?;
    if hook == Hook::Xdp {
        // Without redirect targets, everything XDP translated went to the stack.
        let translated = case
            .steps
            .iter()
            .filter(|s| s.verdict == Verdict::Pass && matches!(s.output, Expect::Exactly(_)))
            .count() as u64;
        let passed = event(&dp.maps, "xdp_pass_translated");
        if passed != translated || event(&dp.maps, "xdp_redirect") != 0 {
            return Err(format!(
                "xdp_pass_translated {passed} (expected {translated}), xdp_redirect {}",
                event(&dp.maps, "xdp_redirect")
            ));
        }
    }
    Ok(())
}

/// Runs every case of `table` through every ingress hook; panics listing the failures.
pub fn run_table(table: &[Case]) {
    run_table_on(table, &HOOKS);
}

/// Runs every case of `table` through each of `hooks`; panics listing the failures.
pub fn run_table_on(table: &[Case], hooks: &[Hook]) {
    let mut failures = Vec::new();
    for &hook in hooks {
        for case in table {
            match run_case(case, hook) {
                Ok(()) => println!("ok   [{hook:?}] {}", case.name),
                Err(e) => {
                    println!("FAIL [{hook:?}] {}: {e}", case.name);
                    failures.push(format!("[{hook:?}] {}: {e}", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixture runs failed:\n{}",
        failures.len(),
        table.len() * hooks.len(),
        failures.join("\n")
    );
}
