//! Service and EndpointSlice files (single objects, `kind: List`, multi-document). Must never
//! panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use veer_agent::config::services::{self, ServiceIndex};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(objs) = services::load_str(Path::new("/fuzz/services.yaml"), text) {
        ServiceIndex::new().insert(&objs);
    }
});
