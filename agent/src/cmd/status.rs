//! `veer status`: agent health (from its status file), pods, Routes, map occupancy and the
//! drop/error counters (from the pinned maps, when they can be opened).

use std::{path::Path, time::Duration};

use crate::{
    cli::status::{self as report, Live},
    error_chain,
    maps::{Maps, read_occupancy},
};

use super::{AgentFiles, Format, print};

/// Prints the status report; the agent is reported down when its status file is older than
/// `stale_after`. Unreadable maps or files are part of the report, not errors.
pub fn run(
    root: &Path,
    status_file: &Path,
    stale_after: Duration,
    format: Format,
) -> anyhow::Result<()> {
    let (loaded, files) = AgentFiles::load(status_file);
    let health = report::health(status_file, loaded.as_ref(), stale_after);
    let maps = Maps::open_pinned(root).map_err(|e| error_chain(&e));
    let live = maps.as_ref().map_err(Clone::clone).and_then(|m| {
        let occ = read_occupancy(m).map_err(|e| error_chain(&e))?;
        let totals = m.stats_totals().map_err(|e| error_chain(&e))?;
        Ok((occ, totals.to_vec()))
    });
    let totals = |id: u32| {
        maps.as_ref()
            .ok()?
            .rule_totals(id)
            .ok()
            .map(|t| (t.packets, t.bytes))
    };
    let r = report::build(
        health,
        files.status.as_ref(),
        Live {
            index: files.index.as_ref().map_err(Clone::clone),
            index_path: files.index.is_ok().then(|| files.index_path.clone()),
            maps: live,
            rule_totals: maps
                .is_ok()
                .then_some(&totals as &dyn Fn(u32) -> Option<(u64, u64)>),
        },
    );
    print(format, &r, report::render)
}
