//! `kproxy check`: every kernel program through the verifier, with its size.

use kproxy::ebpf;

pub fn run() -> anyhow::Result<()> {
    // The maps are pinned by name: load them under a scratch directory, never the
    // agent's, and remove it afterwards.
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/kproxy-check-{}", std::process::id()));
    let opts = ebpf::LoadOptions {
        pin_dir: pin_dir.clone(),
        conntrack_max: Some(1024),
    };
    let loaded = ebpf::Loaded::load(&opts);
    let unpinned = ebpf::unpin_all(&pin_dir);
    let datapath = loaded?;
    unpinned?;
    for (name, insns) in datapath.instruction_counts() {
        anyhow::ensure!(insns > 0, "{name}: no verified instruction count");
        println!("{name}: verified, {insns} instructions");
    }
    Ok(())
}
