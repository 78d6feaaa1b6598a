//! One frame through a TC or XDP program with BPF_PROG_TEST_RUN.

use std::time::Duration;

use aya::{TestRun as _, TestRunOptions, programs::Program};

/// `xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in` (to run on a chosen interface).
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// What one run gave.
pub struct Output {
    /// The program's return code.
    pub code: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's timing of the run.
    pub duration: Duration,
}

/// Runs `input` through `program` (TC or XDP) once. For XDP, `ingress_ifindex` (in the
/// calling thread's namespace) is where the frame arrives; by default, the loopback.
pub fn run(program: &Program, input: &[u8], ingress_ifindex: Option<u32>) -> Result<Output, String> {
    let mut out = vec![0u8; input.len() + 256];
    let md = ingress_ifindex.map(|ifindex| XdpMd {
        data: 0,
        data_end: input.len() as u32,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    });
    // SAFETY: XdpMd is repr(C) plain u32s without padding; viewed as bytes while borrowed.
    let ctx_in = md.as_ref().map(|md| unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref::<XdpMd>(md).cast::<u8>(), size_of::<XdpMd>())
    });
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in,
        ..Default::default()
    };
    let r = match program {
        Program::SchedClassifier(p) => p.test_run(opts),
        Program::Xdp(p) => p.test_run(opts),
        _ => return Err("not a TC or XDP program".into()),
    }
    .map_err(|e| format!("BPF_PROG_TEST_RUN: {e:?}"))?;
    out.truncate(r.data_size_out as usize);
    Ok(Output {
        code: r.return_value,
        frame: out,
        duration: r.duration,
    })
}
