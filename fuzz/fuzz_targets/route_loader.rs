//! Route files (CR form and shorthand): load, then compile what was accepted. Must never panic.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use veer_agent::config::{Compiled, RouteSet, compile_all_pods, load, services::ServiceIndex};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = PathBuf::from("/fuzz/routes.yaml");
    let result = load::load_str(&file, text);
    let mut set = RouteSet::new();
    let _ = set.update_file(file, result);
    let _ = compile_all_pods(set.routes(), &ServiceIndex::new(), &Compiled::default());
});
