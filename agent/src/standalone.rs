//! Standalone mode: `veer run --routes <file|dir> [--services <file|dir>]` on a node without
//! Kubernetes. The [`FileSource`] reads Route and Service files; everything else is the node
//! loop every mode runs ([`crate::node`]).
//!
//! Each round reloads the files (a change of any of them, of the CNI result cache or of the
//! netns directory wakes the loop; it also runs every `resync` interval). A bad Route file keeps
//! its last good version in force; the other files still apply. Every Route applies to every
//! pod: one ruleset.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
};

use crate::{
    config::{
        PodSandbox, RouteSet, ServiceIndex,
        compile::{ALL_PODS_RULESET, CompileError, Compiled},
        compile_all_pods, load, services,
    },
    dataplane::{Dataplane, DataplaneError},
    node::{self, Done, NodeConfig, NodeDataplane, NodeError, Source, Wake},
    reconcile::{ReconcileError, Reconciler},
    report::{Mode, StatusFile},
};

/// Settings of standalone mode.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    /// Route file or directory.
    pub routes: PathBuf,
    /// Service/EndpointSlice file or directory.
    pub services: Option<PathBuf>,
    /// The node loop's settings (paths, status file, metrics, resync and wake-up timing).
    pub node: NodeConfig,
}

/// Errors that stop the agent (everything else is reported and retried).
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Route and Service files as a [`Source`].
pub struct FileSource {
    routes_path: PathBuf,
    services_path: Option<PathBuf>,
    /// Every Route file's last good version.
    routes: RouteSet,
}

/// One round's reading of the files.
pub struct FileInputs {
    routes: Vec<crate::config::LoadedRoute>,
    services: ServiceIndex,
    sandboxes: Vec<PodSandbox>,
    load_errors: Vec<String>,
    service_errors: Vec<String>,
}

impl FileSource {
    pub fn new(routes: PathBuf, services: Option<PathBuf>) -> Self {
        Self {
            routes_path: routes,
            services_path: services,
            routes: RouteSet::new(),
        }
    }
}

impl Source for FileSource {
    type Inputs = FileInputs;

    fn mode(&self) -> Mode {
        Mode::Standalone
    }

    fn watched(&self) -> Vec<PathBuf> {
        std::iter::once(self.routes_path.clone())
            .chain(self.services_path.clone())
            .collect()
    }

    fn read(&mut self, sandboxes: &[PodSandbox]) -> FileInputs {
        let load_errors = load_routes(&mut self.routes, &self.routes_path);
        for e in &load_errors {
            tracing::error!(error = %e, "Route file rejected; its last good version stays in force");
        }
        let mut service_errors = Vec::new();
        let services = load_services(self.services_path.as_deref(), &mut service_errors);
        for e in &service_errors {
            tracing::error!(error = %e, "Service file rejected");
        }
        FileInputs {
            routes: self.routes.routes().cloned().collect(),
            services,
            sandboxes: sandboxes.to_vec(),
            load_errors,
            service_errors,
        }
    }

    fn compile(&self, inputs: &FileInputs, prev: &Compiled) -> Result<Compiled, CompileError> {
        compile_all_pods(&inputs.routes, &inputs.services, prev)
    }

    fn pods(&self, inputs: &FileInputs) -> Vec<(PodSandbox, u32)> {
        inputs
            .sandboxes
            .iter()
            .map(|s| (s.clone(), ALL_PODS_RULESET))
            .collect()
    }

    async fn finish(
        &mut self,
        inputs: FileInputs,
        _done: &Done<'_>,
        report: &mut StatusFile,
    ) -> Vec<(&'static str, usize)> {
        let names: Vec<String> = inputs.routes.iter().map(|r| r.name.clone()).collect();
        report.rulesets = [(ALL_PODS_RULESET, names.clone())].into();
        for p in &mut report.pods {
            p.routes = names.clone();
        }
        report.routes = names;
        let counts = vec![
            ("routes", inputs.load_errors.len()),
            ("services", inputs.service_errors.len()),
        ];
        report.load_errors = inputs
            .load_errors
            .into_iter()
            .chain(inputs.service_errors)
            .collect();
        counts
    }
}

fn load_routes(set: &mut RouteSet, path: &Path) -> Vec<String> {
    if path.is_dir() {
        match load::load_dir(path) {
            Ok(results) => set
                .update_dir(results)
                .iter()
                .map(ToString::to_string)
                .collect(),
            Err(e) => vec![e.to_string()],
        }
    } else {
        match set.update_file(path.to_path_buf(), load::load_file(path)) {
            Ok(()) => Vec::new(),
            Err(es) => es.iter().map(ToString::to_string).collect(),
        }
    }
}

fn load_services(path: Option<&Path>, errors: &mut Vec<String>) -> ServiceIndex {
    let mut index = ServiceIndex::new();
    let Some(path) = path else { return index };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| load::is_config_file(p))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        match services::load_file(&f) {
            Ok(objs) => index.insert(&objs),
            Err(es) => errors.extend(es.iter().map(ToString::to_string)),
        }
    }
    index
}

/// Runs until `stop` is set. Returns only on a fatal error or stop; the datapath (pinned maps
/// and links) keeps working after the agent exits.
pub fn run(cfg: StandaloneConfig, stop: Arc<AtomicBool>) -> Result<(), StandaloneError> {
    let dp = Dataplane::load_pinned(&cfg.node.bpffs_root)?;
    let rec = Reconciler::new(dp)?;
    run_with(cfg, rec, stop)
}

/// [`run`] with a given dataplane (tests use a double: the loop needs no BPF).
pub fn run_with(
    cfg: StandaloneConfig,
    dp: impl NodeDataplane,
    stop: Arc<AtomicBool>,
) -> Result<(), StandaloneError> {
    let source = FileSource::new(cfg.routes.clone(), cfg.services.clone());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StandaloneError::Runtime)?
        .block_on(node::run(source, dp, cfg.node, Wake::new(), stop))?;
    Ok(())
}
