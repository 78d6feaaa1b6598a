//! The `bpf(2)` link calls aya 0.14 keeps crate-private, for links pinned by an earlier
//! agent: open a pin, swap a program into a link, detach a link at once.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf(cmd, attr)` with `attr` the command's leading `bpf_attr` fields.
fn bpf<T>(cmd: libc::c_long, attr: &[T]) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads `size_of_val(attr)` bytes of `attr`, which the caller laid out
    // as the command's `bpf_attr`; any pointer in it outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(attr)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens the BPF object pinned at `path` (`BPF_OBJ_GET`).
pub(super) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags.
    let fd = bpf(BPF_OBJ_GET, &[path.as_ptr() as u64, 0])?;
    // SAFETY: a fresh fd returned to us by BPF_OBJ_GET.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Swaps `prog` into `link` (`BPF_LINK_UPDATE`).
pub(super) fn link_update(link: &OwnedFd, prog: BorrowedFd<'_>) -> io::Result<()> {
    // bpf_attr for BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd.
    bpf(
        BPF_LINK_UPDATE,
        &[link.as_raw_fd() as u32, prog.as_raw_fd() as u32, 0, 0],
    )?;
    Ok(())
}

/// Detaches `link` at once (`BPF_LINK_DETACH`), whoever else holds it.
pub(super) fn link_detach(link: &OwnedFd) -> io::Result<()> {
    // bpf_attr for BPF_LINK_DETACH: link_fd.
    bpf(BPF_LINK_DETACH, &[link.as_raw_fd() as u32, 0])?;
    Ok(())
}
