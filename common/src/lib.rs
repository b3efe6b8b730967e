//! Types shared by the veer eBPF programs (`veer-ebpf`) and the agent (`veer-agent`).
//!
//! Everything that crosses the kernel/user boundary is defined here exactly once:
//! map names ([`maps`]), bpffs paths ([`paths`]), map key/value layouts ([`types`]) and
//! the per-reason counter indexes ([`stats`]).
//!
//! Rules for the types in this crate (they are ABI):
//! - `#[repr(C)]`, explicit padding fields, no `bool`/`enum`/`Option`;
//! - a `const` size assertion next to each type;
//! - the byte order of every multi-byte field is stated in its doc comment;
//! - a layout change bumps the `_V<n>` suffix of every map name that uses the type.
#![no_std]

pub mod maps;
pub mod paths;
pub mod stats;
pub mod types;

pub use types::*;
