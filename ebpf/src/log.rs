//! Debug events through aya-log, compiled only into the debug object (`--features debug-log`).
//!
//! [`debug_event!`] takes the arguments of `aya_log_ebpf::debug!`. Without the feature it expands
//! to nothing: the default object carries no logging code, no `AYA_LOGS` ring buffer and no
//! legacy `maps` section. With the feature, an event is written only while `CFG_F_DEBUG` is set
//! in `VEER_CONFIG_V1`, so even the debug object is quiet until switched on at run time.
//!
//! Stack: the egress program uses most of the 512-byte BPF stack already, so events keep to a
//! few arguments (each literal piece, hint and value of a format string is a field on the stack).

/// Whether debug events are switched on: [`veer_common::Config::debug`] of the configuration
/// entry (an entry never written is all zeros: debug off), read in place rather than copied
/// onto the stack.
#[cfg(feature = "debug-log")]
#[inline(always)]
pub fn enabled() -> bool {
    match crate::maps::VEER_CONFIG_V1.get(0) {
        Some(c) => c.debug(),
        None => false,
    }
}

/// Emits a debug event (see the module documentation).
#[cfg(feature = "debug-log")]
macro_rules! debug_event {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::log::enabled() {
            ::aya_log_ebpf::debug!($ctx, $($arg)+);
        }
    };
}

/// Emits a debug event (see the module documentation): nothing in this build.
#[cfg(not(feature = "debug-log"))]
macro_rules! debug_event {
    ($ctx:expr, $($arg:tt)+) => {};
}
