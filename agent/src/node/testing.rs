//! Doubles for the node loop's tests (cargo feature `testing`): a dataplane that records what
//! it is asked ([`FakeDp`]) and CNI result files like a node's ([`write_cni_result`]). Both
//! modes' loops are tested with them without BPF or root (`agent/tests/k8s_mock.rs`,
//! `agent/tests/standalone_mock.rs`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};

use crate::{
    config::{PodSandbox, compile::Compiled},
    node::{Applied, NodeDataplane},
    report::{PodIface, PodReport, Skipped},
};

/// What the [`FakeDp`] was asked.
#[derive(Default)]
pub struct DpRecord {
    pub rounds: Vec<(Compiled, Vec<(PodSandbox, u32)>)>,
    pub orphan_sweeps: usize,
    /// The bpffs root of every `remove_stale_pins` call.
    pub stale_removals: Vec<PathBuf>,
    /// Pods (by name) whose setup fails.
    pub failing: BTreeSet<String>,
    /// Every debug switch asked of the dataplane (`true`: debug object in).
    pub debug_switches: Vec<bool>,
}

/// A dataplane double: every pod has `eth0`, pods whose name starts with `web` also `eth1`;
/// pods named in [`DpRecord::failing`] fail to be set up. Records every apply.
pub struct FakeDp {
    pub applied: Compiled,
    pub record: Arc<Mutex<DpRecord>>,
}

impl FakeDp {
    /// A double with nothing applied, and its record.
    pub fn new() -> (Self, Arc<Mutex<DpRecord>>) {
        let record = Arc::new(Mutex::new(DpRecord::default()));
        let dp = Self {
            applied: Compiled::default(),
            record: record.clone(),
        };
        (dp, record)
    }
}

/// The double records `veer debug` switches.
impl crate::debug::DebugEvents for FakeDp {
    fn debug_events(&self) -> bool {
        self.record.lock().unwrap().debug_switches.last() == Some(&true)
    }

    fn set_debug_events(&mut self, on: bool) -> Result<Option<crate::dataplane::DebugLog>, String> {
        self.record.lock().unwrap().debug_switches.push(on);
        Ok(None)
    }
}

impl NodeDataplane for FakeDp {
    fn applied(&self) -> &Compiled {
        &self.applied
    }

    fn apply(&mut self, compiled: Compiled, pods: &[(PodSandbox, u32)]) -> Applied {
        self.applied = compiled.clone();
        let mut rec = self.record.lock().unwrap();
        rec.rounds.push((compiled, pods.to_vec()));
        // Every pod has eth0; only web pods have eth1.
        let pods = pods
            .iter()
            .map(|(s, _)| {
                let pod = format!("{}/{}", s.namespace, s.name);
                if rec.failing.contains(&s.name) {
                    return PodReport {
                        pod,
                        uid: s.uid.clone(),
                        netns: Some(s.netns.clone()),
                        failure: Some("entering the namespace: gone".into()),
                        ..Default::default()
                    };
                }
                let eth1 = s.name.starts_with("web");
                let iface = |name: &str, ifindex| PodIface {
                    name: name.into(),
                    ifindex: Some(ifindex),
                    slot: None,
                };
                PodReport {
                    pod,
                    uid: s.uid.clone(),
                    netns: Some(s.netns.clone()),
                    interfaces: if eth1 {
                        vec![iface("eth0", 2), iface("eth1", 3)]
                    } else {
                        vec![iface("eth0", 2)]
                    },
                    skipped: if eth1 {
                        vec![]
                    } else {
                        vec![Skipped {
                            iface: "eth1".into(),
                            reason: "the pod has no interface eth1".into(),
                        }]
                    },
                    ..Default::default()
                }
            })
            .collect();
        Applied {
            pods,
            rules_error: None,
        }
    }

    fn remove_orphans(&mut self) {
        self.record.lock().unwrap().orphan_sweeps += 1;
    }

    fn remove_stale_pins(&mut self, bpffs_root: &Path) -> usize {
        self.record
            .lock()
            .unwrap()
            .stale_removals
            .push(bpffs_root.to_path_buf());
        1
    }
}

/// Writes a libcni loopback result file (the seed's, for pod `ns/name` with `uid`; sandbox
/// `/var/run/netns/cni-<name>`) into `dir`.
pub fn write_cni_result(dir: &Path, ns: &str, name: &str, uid: &str) {
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/seed/cni-loopback-result.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut v = seed.clone();
    let id = format!("{:0>64}", uid.replace('-', ""));
    v["containerId"] = json!(id);
    v["cniArgs"] = json!([
        ["K8S_POD_NAMESPACE", ns],
        ["K8S_POD_NAME", name],
        ["K8S_POD_UID", uid]
    ]);
    v["result"]["interfaces"][0]["sandbox"] = json!(format!("/var/run/netns/cni-{name}"));
    std::fs::write(
        dir.join(format!("cni-loopback-{id}-lo")),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
}
