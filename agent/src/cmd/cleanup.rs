//! `veer cleanup`: removes every pin veer created under the bpffs root (pinned links are
//! detached with them).

use std::{io, path::Path};

use anyhow::Context;

/// Removes `root` and everything under it; `false` when there was nothing there.
pub fn remove_pins(root: &Path) -> io::Result<bool> {
    if !root.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(root)?;
    Ok(true)
}

/// Removes the pins under `root` and says what was done.
pub fn run(root: &Path) -> anyhow::Result<()> {
    if remove_pins(root).with_context(|| format!("removing {}", root.display()))? {
        println!("removed {}", root.display());
    } else {
        println!("nothing to remove at {}", root.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_root_is_removed_and_a_missing_one_is_nothing_to_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("veer");
        std::fs::create_dir_all(root.join("maps")).unwrap();
        std::fs::write(root.join("maps/VEER_FLOWS_V1"), b"").unwrap();
        assert!(remove_pins(&root).unwrap());
        assert!(!root.exists());
        assert!(!remove_pins(&root).unwrap());
        assert!(dir.path().exists(), "only the root goes");
    }
}
