//! The agent's and the CLI's log on stderr (`tracing`), filtered by `RUST_LOG`.

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event (for log collectors).
    Json,
}

/// Default log filter when RUST_LOG is not set: debug events of the eBPF programs (debug
/// object only) are let through.
pub const DEFAULT_FILTER: &str = "info,veer_ebpf=debug";

/// Installs the global subscriber (once per process).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().flatten_event(true).with_current_span(false).init(),
    }
}
