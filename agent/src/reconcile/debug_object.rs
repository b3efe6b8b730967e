//! Switching every managed pod between the default eBPF object and its debug-log variant
//! ([`DebugEvents`] for the reconcile core), and the `CFG_F_DEBUG` flag that goes with it.

use std::path::PathBuf;

use super::{ReconcileError, Reconciler};
use crate::{
    dataplane::{Dataplane, DebugLog},
    debug::DebugEvents,
    maps::Maps,
};

impl Reconciler {
    /// Swaps the debug object in (`on`) or the default one back, for every managed pod, and
    /// sets `CFG_F_DEBUG` accordingly (see [`crate::dataplane`]). Rules, interfaces, flows and
    /// counters are the same pinned maps either way. A pod whose swap fails keeps running the
    /// other object (both are complete) and is retried at the next pod sync.
    ///
    /// Make before break: each pod's programs are replaced inside its existing links
    /// (`bpf_link_update`, in `setup_pod`), nothing is detached.
    /// Switching off, the flag is cleared before the first pod is swapped back (the debug
    /// programs check it at each event site, so they go quiet first); switching on, it is set
    /// only after every pod runs the debug programs.
    pub fn switch_object(&mut self, on: bool) -> Result<Option<DebugLog>, ReconcileError> {
        let root = self
            .dp
            .root()
            .ok_or(ReconcileError::NotPinned)?
            .to_path_buf();
        let new = Dataplane::load_pinned_with(&root, on)?;
        if !on {
            // Quiet first: the debug programs check the flag at each event site.
            write_debug_flag(&mut self.maps, false)?;
        }
        self.dp = new;
        let keys: Vec<PathBuf> = self.pods.keys().cloned().collect();
        for k in keys {
            if let Some(mut p) = self.pods.remove(&k) {
                if let Err(e) = self.setup_pod(&mut p, false) {
                    let (ns, name) = (p.namespace.clone(), p.name.clone());
                    self.fail(&ns, &name, &k, &e);
                }
                self.pods.insert(k, p);
            }
        }
        if on {
            write_debug_flag(&mut self.maps, true)?;
        }
        Ok(self.dp.take_debug_log())
    }
}

impl DebugEvents for Reconciler {
    fn debug_events(&self) -> bool {
        self.dp.is_debug()
    }

    fn set_debug_events(&mut self, on: bool) -> Result<Option<DebugLog>, String> {
        self.switch_object(on).map_err(|e| crate::error_chain(&e))
    }
}

/// Sets or clears `CFG_F_DEBUG` in `VEER_CONFIG_V1`, keeping the other settings.
pub(super) fn write_debug_flag(maps: &mut Maps, on: bool) -> Result<(), ReconcileError> {
    maps.set_debug_flag(on)?;
    Ok(())
}
