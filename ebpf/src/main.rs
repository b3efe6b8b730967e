//! veer's TC programs. They run inside each managed pod's network namespace:
//!
//! - `veer_egress` (TC egress of every managed interface) looks the destination up in the
//!   node-wide rule tries and, when a rule selects another interface of the pod, translates the
//!   source address to that interface's address and redirects the packet there with
//!   `bpf_redirect_neigh`. Decisions are pinned per flow in `VEER_FLOWS_V1`.
//! - `veer_ingress` (TC ingress of every managed interface) restores the destination of replies
//!   (and of ICMP errors) of translated flows and re-delivers them on the original interface, so
//!   sockets and `rp_filter` see them as if they had arrived there.
//!
//! Anything veer does not own (no rule, unmanaged interface, non-IP, fragments, …) leaves
//! exactly as it came, and every outcome is counted in `VEER_STATS_V1`.
#![no_std]
#![no_main]
// Map keys and values are passed by reference on purpose: by value they would be copied on the
// 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

// First, so that `debug_event!` is in scope in the modules below.
#[macro_use]
mod log;

mod flow;
mod maps;
mod packet;
mod rewrite;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use veer_common::stats;

/// Outcome of one run: the verdict to return and the counter that explains it.
pub struct Verdict {
    pub action: i32,
    pub reason: u32,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: u32) -> Self {
        Self {
            action: TC_ACT_OK,
            reason,
        }
    }
}

/// Turns a result into the verdict returned to the kernel, counting its reason.
/// Errors before any rewrite pass the packet untouched; a failed rewrite drops it, because a
/// half-rewritten packet must never leave.
#[inline(always)]
fn finish(r: Result<Verdict, u32>) -> i32 {
    match r {
        Ok(v) => {
            maps::count(v.reason);
            v.action
        }
        Err(reason) => {
            maps::count(reason);
            if reason == stats::ERR_REWRITE {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
    }
}

#[classifier]
pub fn veer_egress(ctx: TcContext) -> i32 {
    finish(flow::try_egress(&ctx))
}

#[classifier]
pub fn veer_ingress(ctx: TcContext) -> i32 {
    finish(flow::try_ingress(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
