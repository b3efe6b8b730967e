//! Handing the desired state to the dataplane: [`NodeDataplane`], implemented by the reconcile
//! core ([`Reconciler`]) and by test doubles (the Kubernetes loop needs no BPF to be tested).
//!
//! Every pod gets its own ruleset through [`Reconciler::sync_pods_with_rulesets`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::PodSandbox;
use crate::config::compile::{CompileError, Compiled};
use crate::debug::DebugEvents;
use crate::reconcile::{ReconcileError, Reconciler};

/// What the dataplane did with one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOutcome {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Interfaces where rules are in force.
    pub managed: Vec<String>,
    /// Interfaces named by rules that are skipped for this pod, and why.
    pub skipped: Vec<(String, String)>,
    /// Why the pod could not be set up this round (it is retried).
    pub failure: Option<String>,
}

/// Errors of one apply round (the previous state stays in force; retried next round).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// The dataplane as the Kubernetes loop drives it. Its debug events may be switchable
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
    /// ruleset). Returns what happened to every pod.
    fn apply(
        &mut self,
        compiled: Compiled,
        pods: &[(PodSandbox, u32)],
    ) -> Result<Vec<PodOutcome>, ApplyError>;

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

    fn apply(
        &mut self,
        compiled: Compiled,
        pods: &[(PodSandbox, u32)],
    ) -> Result<Vec<PodOutcome>, ApplyError> {
        self.apply_rules(compiled)?;
        self.sync_pods_with_rulesets(pods);
        let sandboxes: Vec<PodSandbox> = pods.iter().map(|(s, _)| s.clone()).collect();
        Ok(outcomes(self, &sandboxes))
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

/// The outcome of every sandbox from the reconciler's pod states and failures.
fn outcomes(rec: &Reconciler, sandboxes: &[PodSandbox]) -> Vec<PodOutcome> {
    let uid_of: BTreeMap<(&str, &str), &str> = sandboxes
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s.uid.as_str()))
        .collect();
    let mut out: Vec<PodOutcome> = rec
        .pods()
        .map(|p| PodOutcome {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
            managed: p.ifaces.iter().map(|(n, _, _)| n.clone()).collect(),
            skipped: p
                .skipped
                .iter()
                .map(|s| (s.iface.clone(), s.reason.clone()))
                .collect(),
            failure: None,
        })
        .collect();
    for f in &rec.failures {
        out.push(PodOutcome {
            namespace: f.namespace.clone(),
            name: f.name.clone(),
            uid: uid_of
                .get(&(f.namespace.as_str(), f.name.as_str()))
                .map(|u| u.to_string())
                .unwrap_or_default(),
            failure: Some(f.error.clone()),
            ..Default::default()
        });
    }
    out
}
