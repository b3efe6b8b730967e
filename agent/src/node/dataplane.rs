//! Handing the desired state to the dataplane: [`NodeDataplane`], implemented by the reconcile
//! core ([`Reconciler`]) and by test doubles (the node loop needs no BPF to be tested, in
//! either mode).
//!
//! Every pod gets its own ruleset through [`Reconciler::sync_pods_with_rulesets`].

use std::path::Path;

use crate::config::PodSandbox;
use crate::config::compile::{CompileError, Compiled};
use crate::debug::DebugEvents;
use crate::reconcile::{ReconcileError, Reconciler};
use crate::report::PodReport;

/// Errors of one apply round (the previous state stays in force; retried next round).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// What one apply did: every pod's report, and why the rules could not be written (the pods
/// were still brought in line with the rules in force).
#[derive(Debug, Default)]
pub struct Applied {
    pub pods: Vec<PodReport>,
    pub rules_error: Option<ApplyError>,
}

/// The dataplane as the node loop drives it. Its debug events may be switchable
/// ([`DebugEvents`]; doubles take the defaults: not switchable).
pub trait NodeDataplane: DebugEvents + Send + 'static {
    /// The compilation in force (for sticky slots and rule ids).
    fn applied(&self) -> &Compiled;

    /// Runs `compile` against what is in force, for sticky slots and rule ids (the reconcile
    /// core also seeds them from the live maps after a restart:
    /// [`Reconciler::compile_sticky`]).
    fn compile_sticky(
        &self,
        compile: &dyn Fn(&Compiled) -> Result<Compiled, CompileError>,
    ) -> Result<Compiled, CompileError> {
        compile(self.applied())
    }

    /// Makes the maps hold `compiled` and the managed pods exactly `pods` (each with its
    /// ruleset). When the rules cannot be written the previous ones stay in force and the pods
    /// are still synced against them. Returns what happened to every pod (managed or failed;
    /// `routes` left empty).
    fn apply(&mut self, compiled: Compiled, pods: &[(PodSandbox, u32)]) -> Applied;

    /// Removes state left by a previous agent for pods that no longer exist (after the first
    /// apply).
    fn remove_orphans(&mut self);

    /// Removes the maps a layout migration moved aside (`<NAME>_stale` pins under
    /// `bpffs_root`). The loop calls it once, after the first apply in which every pod was set
    /// up: until then a pod that failed may still run the old programs, which use those maps.
    /// Returns how many pins were removed.
    fn remove_stale_pins(&mut self, bpffs_root: &Path) -> usize;

    /// Follows the managed pods' network facts (interfaces, addresses, routes) for their whole
    /// life, calling `wake` when one changed ([`Reconciler::follow_pods`]). Doubles without
    /// namespaces need nothing.
    fn follow_pods(&mut self, _wake: Box<dyn Fn() + Send + Sync>) {}
}

impl NodeDataplane for Reconciler {
    fn applied(&self) -> &Compiled {
        Reconciler::applied(self)
    }

    fn compile_sticky(
        &self,
        compile: &dyn Fn(&Compiled) -> Result<Compiled, CompileError>,
    ) -> Result<Compiled, CompileError> {
        Reconciler::compile_sticky(self, compile)
    }

    fn apply(&mut self, compiled: Compiled, pods: &[(PodSandbox, u32)]) -> Applied {
        let rules_error = self.apply_rules(compiled).err().map(ApplyError::from);
        self.sync_pods_with_rulesets(pods);
        let sandboxes: Vec<PodSandbox> = pods.iter().map(|(s, _)| s.clone()).collect();
        Applied {
            pods: self.reports(&sandboxes),
            rules_error,
        }
    }

    fn remove_orphans(&mut self) {
        Reconciler::remove_orphans(self);
    }

    fn remove_stale_pins(&mut self, bpffs_root: &Path) -> usize {
        crate::dataplane::remove_stale_pins(bpffs_root)
    }

    fn follow_pods(&mut self, wake: Box<dyn Fn() + Send + Sync>) {
        Reconciler::follow_pods(self, wake);
    }
}
