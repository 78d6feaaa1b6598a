//! Types shared by the kernel programs (`kproxy-ebpf`) and the agent (`kproxy-userspace`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields, so the byte
//! layout is the same on both sides and no uninitialised byte is ever hashed.
#![no_std]

pub mod counters;

pub use counters::{CounterKey, IfaceCounters};
