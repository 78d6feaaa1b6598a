//! One agent per pin path: an exclusive `flock` on the pin directory, held for the
//! agent's life (the kernel drops it when the process ends, even on SIGKILL). A second
//! agent on the same path (a DaemonSet rolling update with surge) waits for it, so two
//! agents never write the same maps and links at once.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    thread,
    time::Duration,
};

use log::info;
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::signals;

/// How often a waiting agent tries the lock again.
const RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum PinLockError {
    #[error("create pin directory {}: `mkdir` failed (is bpffs mounted at /sys/fs/bpf?)", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open pin directory {}: `open` failed", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock pin directory {}: `flock` failed", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// The held lock; released when dropped (or when the process ends).
pub struct PinLock {
    _lock: Flock<File>,
}

/// Takes the lock of `pin_path`, waiting while another agent holds it; None if `stop`
/// was raised while waiting.
pub fn acquire(pin_path: &Path, stop: &AtomicBool) -> Result<Option<PinLock>, PinLockError> {
    fs::create_dir_all(pin_path).map_err(|source| PinLockError::Create {
        path: pin_path.into(),
        source,
    })?;
    let mut waited = false;
    loop {
        let dir = File::open(pin_path).map_err(|source| PinLockError::Open {
            path: pin_path.into(),
            source,
        })?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if waited {
                    info!("the other agent on {} is gone: taking over", pin_path.display());
                }
                return Ok(Some(PinLock { _lock: lock }));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if !waited {
                    info!(
                        "another agent holds {}: waiting for it to exit (one agent per pin path)",
                        pin_path.display()
                    );
                    waited = true;
                }
                if signals::stopped(stop) {
                    return Ok(None);
                }
                thread::sleep(RETRY);
            }
            Err((_, source)) => {
                return Err(PinLockError::Lock {
                    path: pin_path.into(),
                    source,
                });
            }
        }
    }
}
