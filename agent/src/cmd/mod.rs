//! The `veer` subcommands, one module each: what a command reads, in which order, and where its
//! output goes. `main.rs` parses the command line and calls the entry point here.
//!
//! Entry points return [`anyhow::Result`] (this is the edge: errors are reported to the operator,
//! not handled); the reading is done by [`crate::maps`] and [`crate::report`], and the reports are
//! built and rendered by [`crate::cli`]. This module holds what the read-only commands share:
//! the agent's files ([`AgentFiles`]: status file and rule index) and the output format
//! ([`Format`], [`print`](fn@print)).

pub mod cleanup;
pub mod debug;
pub mod flows;
pub mod load;
pub mod logs;
pub mod maps;
pub mod run;
pub mod stats;
pub mod status;
pub mod trace;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{
    cli, error_chain,
    maps::{Maps, Snapshot},
    report::index::{self, RuleIndex},
    report::{PodReport, StatusError, StatusFile},
};

/// How a command prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// Pretty-printed JSON (stable field names, documented in docs/operations.md).
    Json,
}

/// The text a command prints for `v`: its JSON form (and a newline), or `table`'s rendering.
pub fn render<T: Serialize>(
    format: Format,
    v: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(v)? + "\n",
        Format::Table => table(v),
    })
}

/// Prints [`render`]'s text on stdout.
pub fn print<T: Serialize>(
    format: Format,
    v: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    print!("{}", render(format, v, table)?);
    Ok(())
}

/// The pinned maps under `root`, or an error naming every cause.
pub(crate) fn open_maps(root: &Path) -> anyhow::Result<Maps> {
    Maps::open_pinned(root).map_err(|e| anyhow::anyhow!(error_chain(&e)))
}

/// The decoded maps (with the flow table or not).
pub(crate) fn snapshot(maps: &Maps, with_flows: bool) -> anyhow::Result<Snapshot> {
    Snapshot::read(maps, with_flows).map_err(|e| anyhow::anyhow!(error_chain(&e)))
}

/// What the agent's files say: the status file (if readable) and the rule index (or why not).
pub struct AgentFiles {
    pub status: Option<StatusFile>,
    pub index: Result<RuleIndex, String>,
    /// Where the rule index is (read from or looked for).
    pub index_path: PathBuf,
}

impl AgentFiles {
    /// Reads the status file and the rule index it names (or the one beside it). Returns the
    /// status file's load result too (with its age), for the commands that report on it.
    pub fn load(status_file: &Path) -> (Result<(StatusFile, Duration), StatusError>, Self) {
        let loaded = StatusFile::load(status_file);
        let status = loaded.as_ref().ok().map(|(s, _)| s.clone());
        let index_path = status.as_ref().map_or_else(
            || index::path_for_status(status_file),
            |s| s.index_path(status_file),
        );
        let index = RuleIndex::load(&index_path)
            .map_err(|e| format!("cannot read the rule index {}: {e}", index_path.display()));
        (
            loaded,
            Self {
                status,
                index,
                index_path,
            },
        )
    }

    /// Slot → interface name, from the rule index or else the status file.
    pub fn slots(&self) -> HashMap<u16, String> {
        let status_slots = self
            .status
            .as_ref()
            .map(|s| {
                s.slots
                    .iter()
                    .map(|x| (x.dev.clone(), x.slot))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        cli::maps::slot_names(self.index.as_ref().ok(), &status_slots)
    }

    /// The pods of the status file (none without one).
    pub fn pods(&self) -> Vec<PodReport> {
        self.status
            .as_ref()
            .map(|s| s.pods.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Mode, index::SlotName, write_json_atomic};

    #[test]
    fn json_output_is_pretty_with_a_final_newline_and_table_output_as_rendered() {
        #[derive(Serialize)]
        struct R {
            a: u32,
        }
        let r = R { a: 1 };
        assert_eq!(
            render(Format::Json, &r, |_| "t".into()).unwrap(),
            "{\n  \"a\": 1\n}\n"
        );
        assert_eq!(
            render(Format::Table, &r, |r| format!("A={}\n", r.a)).unwrap(),
            "A=1\n"
        );
    }

    #[test]
    fn without_agent_files_the_index_is_looked_for_beside_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let status_file = dir.path().join("status.json");
        let (loaded, files) = AgentFiles::load(&status_file);
        assert!(loaded.unwrap_err().is_not_found());
        assert!(files.status.is_none());
        assert_eq!(files.index_path, dir.path().join("status.rules.json"));
        let err = files.index.as_ref().unwrap_err();
        assert!(err.starts_with("cannot read the rule index "), "{err}");
        assert!(files.slots().is_empty());
        assert!(files.pods().is_empty());
    }

    #[test]
    fn without_a_rule_index_slot_names_and_pods_come_from_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let status_file = dir.path().join("status.json");
        let mut s = StatusFile::new(Mode::Standalone, 3);
        s.slots = vec![SlotName {
            dev: "eth1".into(),
            slot: 2,
        }];
        s.pods = vec![PodReport {
            pod: "default/web".into(),
            ..Default::default()
        }];
        write_json_atomic(&status_file, &s).unwrap();
        let (loaded, files) = AgentFiles::load(&status_file);
        assert_eq!(loaded.unwrap().0.round, 3);
        assert!(files.index.is_err());
        assert_eq!(files.slots().get(&2).map(String::as_str), Some("eth1"));
        assert_eq!(files.pods().len(), 1);
    }
}
