//! `veer stats`: the packet counters by outcome and reason, summed over CPUs.

use std::path::Path;

use crate::cli::stats as report;

use super::{Format, open_maps, print};

/// Prints every counter that is not reserved.
pub fn run(root: &Path, format: Format) -> anyhow::Result<()> {
    let maps = open_maps(root)?;
    let totals = maps.stats_totals()?;
    print(format, &report::counters(&totals), |_| {
        report::render(&totals)
    })
}
