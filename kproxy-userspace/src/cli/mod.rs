//! The `kproxy` binary's subcommands: argument parsing and printing over the library
//! (anyhow lives here and in `main.rs` only).

pub mod bench;
pub mod check;
pub mod cleanup;
pub mod export;
pub mod inspect;
pub mod run;
