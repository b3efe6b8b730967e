//! `veer flows`: the flow table decoded and named with the agent's files.

use std::path::Path;

use veer_common::{FlowKey, FlowValue};

use crate::{
    cli::{
        flows::{self as report, FlowRow},
        maps::effective_config,
    },
    maps::{Snapshot, monotonic_coarse_ns},
};

use super::{AgentFiles, Format, open_maps, print, snapshot};

/// Prints every flow entry, newest first.
pub fn run(root: &Path, status_file: &Path, format: Format) -> anyhow::Result<()> {
    let maps = open_maps(root)?;
    let snap = snapshot(&maps, true)?;
    let (_, files) = AgentFiles::load(status_file);
    let rows = rows(&snap, &snap.flows, &files);
    print(format, &rows, |r| report::render(r))
}

/// `flows` decoded with the names the agent's files give (pods, slots, rules), ages by the
/// datapath's clock now.
pub(crate) fn rows(
    snap: &Snapshot,
    flows: &[(FlowKey, FlowValue)],
    files: &AgentFiles,
) -> Vec<FlowRow> {
    let slots = files.slots();
    let pods = files.pods();
    let config = effective_config(&snap.config);
    report::rows(
        flows,
        &report::Context {
            ifaces: &snap.ifaces,
            slots: &slots,
            pods: &pods,
            index: files.index.as_ref().ok(),
            config: &config,
            now_ns: monotonic_coarse_ns(),
        },
    )
}
