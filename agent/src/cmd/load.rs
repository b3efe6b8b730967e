//! `veer load`: loads the programs and creates (or adopts, after a layout check) the pinned maps.

use std::path::Path;

use anyhow::Context;
use veer_common::paths;

use crate::dataplane::Dataplane;

/// Loads veer with its pins under `root` and removes stale pins.
pub fn run(root: &Path) -> anyhow::Result<()> {
    let dp = Dataplane::load_pinned(root)
        .with_context(|| format!("loading veer with pins under {}", root.display()))?;
    dp.remove_stale();
    println!("maps pinned under {}", root.join(paths::MAPS_DIR).display());
    Ok(())
}
