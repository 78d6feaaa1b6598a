//! Loading the embedded kernel programs and naming them.

use aya::{Ebpf, EbpfLoader};

/// XDP entry point, for traffic entering the node's external interfaces.
pub const XDP_PROGRAM: &str = "kproxy_xdp";
/// TC ingress entry point, for pod-facing and external interfaces.
pub const TC_INGRESS_PROGRAM: &str = "kproxy_tc_ingress";
/// Every entry point of the object, in the order `kproxy check` reports them.
pub const ALL_PROGRAMS: [&str; 2] = [XDP_PROGRAM, TC_INGRESS_PROGRAM];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this kproxy was built without its eBPF object (KPROXY_SKIP_EBPF=1); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("parse and create maps of the eBPF object: {0:#}")]
    Object(#[from] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("load program {name} (BPF_PROG_LOAD): {source:#}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF is not permitted: run kproxy as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    NotPermitted,
}

/// Parses the embedded object and creates its maps (nothing is loaded into the kernel
/// yet beyond the maps). `configure` can set pin paths, globals and map sizes.
pub fn open(configure: impl FnOnce(&mut EbpfLoader)) -> Result<Ebpf, LoadError> {
    if crate::EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let mut loader = EbpfLoader::new();
    configure(&mut loader);
    loader.load(crate::EBPF_OBJECT).map_err(|err| {
        if is_permission_error(&err) {
            LoadError::NotPermitted
        } else {
            LoadError::Object(err)
        }
    })
}

fn is_permission_error(err: &aya::EbpfError) -> bool {
    let text = format!("{err:#}");
    text.contains("Operation not permitted") || text.contains("EPERM")
}

/// Loads (verifies) the program `name` of `ebpf` into the kernel.
pub fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram(name))?;
    let result = match program {
        aya::programs::Program::Xdp(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        _ => return Err(LoadError::MissingProgram(name)),
    };
    result.map_err(|source| LoadError::Program { name, source })
}
