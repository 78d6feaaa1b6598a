//! Ctrl-C and SIGTERM, caught by the agent's own handlers: every wait and load loop
//! checks the flag and stops early, so the error unwinds through the RAII guards that
//! remove namespaces, pins and agents.

use std::sync::{OnceLock, atomic::AtomicBool};

use anyhow::Context as _;
use kproxy::agent::signals;

/// The flag the handlers set, once installed.
static STOP: OnceLock<&'static AtomicBool> = OnceLock::new();

pub fn install() -> anyhow::Result<()> {
    let flag = signals::install().context("install signal handlers (sigaction)")?;
    let _ = STOP.set(flag);
    Ok(())
}

pub fn interrupted() -> bool {
    STOP.get().is_some_and(|flag| signals::stopped(flag))
}

/// An error when interrupted, for `?` in loops.
pub fn check() -> anyhow::Result<()> {
    anyhow::ensure!(!interrupted(), "interrupted: cleaning up");
    Ok(())
}
