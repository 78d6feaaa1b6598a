//! Kernel-side modules of kproxy. The entry points live in `main.rs`.
#![no_std]

pub mod maps;
pub mod stats;
