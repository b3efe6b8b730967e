//! CNI result cache files (`/var/lib/cni/results/*`), raw bytes. Must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use veer_agent::config::cni;

fuzz_target!(|data: &[u8]| {
    let _ = cni::parse(Path::new("/fuzz/cni-loopback-x-lo"), data);
});
