//! veer's node agent: loads the TC programs, keeps the node-wide maps in line with the desired
//! state, and attaches the programs inside pod network namespaces.
//!
//! Modules:
//! - [`dataplane`]: loading the embedded eBPF object, pinning and layout-checking its maps;
//! - [`maps`]: typed access to the pinned maps (rules, interfaces, flows, counters) and their
//!   decoding (trie keys, flow-key addresses, occupancy, counter and flow-field names);
//! - [`cmd`]: the `veer` subcommands, one module each (`main.rs` only parses and dispatches);
//! - [`cli`]: the reports of the read-only subcommands, built from decoded data and rendered as
//!   tables or JSON;
//! - [`lpm`]: the reference longest-prefix model (tests and `veer trace` use it to explain a
//!   decision the kernel makes);
//! - [`netns`]: running code inside a network namespace on a dedicated thread;
//! - [`debug`]: switching the eBPF debug events on and off at run time.

pub mod attach;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod dataplane;
pub mod debug;
pub mod k8s;
pub mod lpm;
pub mod maps;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod podnet;
pub mod podwatch;
pub mod reconcile;
pub mod report;
pub mod srcaddr;
pub mod standalone;
pub mod wake;

/// The eBPF object built by `cargo xtask build-ebpf --release`, embedded at build time.
pub static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(env!("VEER_EBPF_OBJ"));

/// The debug-log variant of [`EBPF_OBJ`] (`--features debug-log`): the same programs and maps
/// plus aya-log events, emitted only while `CFG_F_DEBUG` is set. It carries aya-log's
/// `AYA_LOGS` ring buffer in the legacy `maps` section, which libbpf rejects, so it is kept
/// apart from the default object; see [`dataplane`] for how the agent switches to it.
pub static EBPF_DEBUG_OBJ: &[u8] = aya::include_bytes_aligned!(env!("VEER_EBPF_DEBUG_OBJ"));

/// An error and its causes on one line, `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
