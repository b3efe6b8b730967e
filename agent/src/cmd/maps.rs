//! `veer maps`: the rule tries, the interface table and the run-time configuration, decoded
//! and named with the agent's files.

use std::path::Path;

use crate::cli::maps::{self as report, MapsReport};

use super::{AgentFiles, Format, open_maps, print, snapshot};

/// Prints the decoded maps (without the flow table).
pub fn run(root: &Path, status_file: &Path, format: Format) -> anyhow::Result<()> {
    let maps = open_maps(root)?;
    let snap = snapshot(&maps, false)?;
    let (_, files) = AgentFiles::load(status_file);
    let index = files.index.as_ref().ok();
    let slots = files.slots();
    let pods = files.pods();
    let totals = |id: u32| maps.rule_totals(id).ok();
    let r = MapsReport {
        rules: report::rule_rows(&snap.rules, index, &slots, &totals),
        interfaces: snap
            .ifaces
            .iter()
            .map(|(k, v)| report::iface_row(k, v, &slots, &pods))
            .collect(),
        config: report::effective_config(&snap.config),
        rule_index_error: files.index.as_ref().err().cloned(),
    };
    print(format, &r, report::render)
}
