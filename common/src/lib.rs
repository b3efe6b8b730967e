//! Types shared by the veer eBPF programs (`veer-ebpf`) and the agent (`veer-agent`).
//!
//! Everything that crosses the kernel/user boundary is defined here exactly once:
//! map names ([`maps`]), bpffs paths ([`paths`]), map key/value layouts ([`types`]) and
//! the per-reason counter indexes ([`stats`]), and the rules both sides apply to them: the
//! effective timeouts ([`Config::timeout_s`]), the trie keys ([`Rule4Key::new`]), the reverse
//! flow key ([`FlowKey::reverse`]) and the destinations never steered ([`dst`]).
//!
//! Rules for the types in this crate (they are ABI):
//! - `#[repr(C)]`, explicit padding fields, no `bool`/`enum`/`Option`;
//! - a `const` size assertion next to each type;
//! - the byte order of every multi-byte field is stated in its doc comment;
//! - a layout change bumps the `_V<n>` suffix of every map name that uses the type.
#![no_std]

// Unit and property tests run on the host.
#[cfg(test)]
extern crate std;

pub mod dst;
pub mod maps;
pub mod paths;
pub mod stats;
pub mod types;

pub use dst::{NeverSteered, is_never_steered, never_steered};
pub use types::*;
