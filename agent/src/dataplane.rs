//! Loading the eBPF object and owning its maps.
//!
//! Maps are pinned under `<root>/maps/<NAME>` (see [`veer_common::paths`]). Before a pinned map
//! is reused, its type, key size, value size, capacity and flags are compared with what this
//! build expects; aya 0.14 would otherwise reuse a map of another layout silently. A mismatched
//! pin (a layout change without a version bump, or a capacity change) is moved aside as
//! `<NAME>_stale` ([`paths::STALE_SUFFIX`]) and a fresh map takes its place; programs still attached keep using the old
//! map until they are re-attached, after which [`Dataplane::remove_stale`] drops it.
//!
//! # Debug events
//!
//! Debug events (new steered flow, collision, flow expired, ICMP error reverse-translated,
//! frame too big) exist only in the debug object, [`EBPF_DEBUG_OBJ`]; the default object,
//! [`EBPF_OBJ`], has no logging code at all, so debugging costs nothing per packet while off.
//! Switching them on at run time, without a restart:
//!
//! 1. load the debug object with the same pins, [`Dataplane::load_pinned_with`]`(root, true)`:
//!    it reuses every pinned veer map, so rules, interfaces, flows and counters carry over;
//! 2. swap its programs into the existing TCX links with `SchedClassifier::attach_to_link`
//!    (what [`crate::attach::attach_pod`] does when it adopts a pinned link): the kernel replaces
//!    the program atomically, no packet sees an interface without one;
//! 3. set [`CFG_F_DEBUG`](veer_common::CFG_F_DEBUG) in `VEER_CONFIG_V1.flags`. The debug
//!    programs check the flag at each event site, so they stay quiet until it is set.
//!
//! [`crate::debug`] drives these steps at run time (`veer debug on|off`) through
//! [`Reconciler::switch_object`](crate::reconcile::Reconciler::switch_object).
//!
//! Switching off clears the flag (the debug programs then only pay a config look-up per event
//! site); the default programs may then be swapped back the same way. Events are read from the
//! debug object's own `AYA_LOGS` ring buffer, which is never pinned (it belongs to one loaded
//! object), by the [`DebugLog`] the loader keeps: [`DebugLog::spawn_drain`] forwards them to
//! `tracing` (target `veer_ebpf`, at their own level, DEBUG, so the filter must let
//! `veer_ebpf=debug` through).

use std::{
    fs,
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, MapInfo, MapType},
    programs::{ProgramError, SchedClassifier},
};
use aya_log::EbpfLogger;
use veer_common::{
    AddrKey, AddrOwner, Config, FlowKey, FlowValue, IfaceInfo, IfaceKey, Rule4Key, Rule6Key,
    RuleStats, RuleValue, maps as names, paths, stats,
};

use crate::{EBPF_DEBUG_OBJ, EBPF_OBJ};

/// Errors of loading and pinning.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object failed")]
    Load(#[from] EbpfError),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("reading the pinned map {path}")]
    PinnedMap {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("reading the debug events of the debug object")]
    DebugLog(#[from] aya_log::Error),
    #[error("bpffs directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The layout a map must have to be reused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

const BPF_F_NO_PREALLOC: u32 = 1;
const LPM_KEY_PREFIX: u32 = 4;

/// The layout of every veer map, derived from the shared types.
pub fn layouts() -> [Layout; 8] {
    let l = |name, map_type, key_size: usize, value_size: usize, max_entries, flags| Layout {
        name,
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        flags,
    };
    [
        l(
            names::RULES4,
            MapType::LpmTrie,
            LPM_KEY_PREFIX as usize + size_of::<Rule4Key>(),
            size_of::<RuleValue>(),
            names::RULES_MAX,
            BPF_F_NO_PREALLOC,
        ),
        l(
            names::RULES6,
            MapType::LpmTrie,
            LPM_KEY_PREFIX as usize + size_of::<Rule6Key>(),
            size_of::<RuleValue>(),
            names::RULES_MAX,
            BPF_F_NO_PREALLOC,
        ),
        l(
            names::IFACES,
            MapType::Hash,
            size_of::<IfaceKey>(),
            size_of::<IfaceInfo>(),
            names::IFACES_MAX,
            0,
        ),
        l(
            names::FLOWS,
            MapType::LruHash,
            size_of::<FlowKey>(),
            size_of::<FlowValue>(),
            names::FLOWS_MAX,
            0,
        ),
        l(names::STATS, MapType::PerCpuArray, 4, 8, stats::COUNT, 0),
        l(
            names::RULE_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<RuleStats>(),
            names::RULE_STATS_MAX,
            0,
        ),
        l(names::CONFIG, MapType::Array, 4, size_of::<Config>(), 1, 0),
        l(
            names::ADDRS,
            MapType::Hash,
            size_of::<AddrKey>(),
            size_of::<AddrOwner>(),
            names::ADDRS_MAX,
            0,
        ),
    ]
}

/// Why a pinned map cannot be reused, or `None` when it matches.
pub fn layout_mismatch(info: &MapInfo, want: &Layout) -> Option<String> {
    let ty = info.map_type().ok();
    let mut diffs = Vec::new();
    if ty != Some(want.map_type) {
        diffs.push(format!("type {ty:?} != {:?}", want.map_type));
    }
    for (what, have, expect) in [
        ("key size", info.key_size(), want.key_size),
        ("value size", info.value_size(), want.value_size),
        ("max entries", info.max_entries(), want.max_entries),
        ("flags", info.map_flags(), want.flags),
    ] {
        if have != expect {
            diffs.push(format!("{what} {have} != {expect}"));
        }
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// One debug event of the debug object, as aya-log decodes it.
#[derive(Debug, Clone)]
pub struct DebugEvent {
    pub level: tracing::Level,
    /// The eBPF module that emitted it (`veer_ebpf::flow`).
    pub target: String,
    /// `file:line` in the eBPF sources.
    pub location: String,
    pub message: String,
}

type SinkFn = Box<dyn Fn(&DebugEvent) + Send + Sync>;

/// Where decoded events go: `tracing`, unless a sink was set with [`DebugLog::set_sink`].
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Option<SinkFn>>>);

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let ev = DebugEvent {
            level: match r.level() {
                log::Level::Error => tracing::Level::ERROR,
                log::Level::Warn => tracing::Level::WARN,
                log::Level::Info => tracing::Level::INFO,
                log::Level::Debug => tracing::Level::DEBUG,
                log::Level::Trace => tracing::Level::TRACE,
            },
            target: r.target().to_string(),
            location: format!("{}:{}", r.file().unwrap_or("?"), r.line().unwrap_or(0)),
            message: r.args().to_string(),
        };
        let sink = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match sink.as_ref() {
            Some(f) => f(&ev),
            None => to_tracing(&ev),
        }
    }

    fn flush(&self) {}
}

fn to_tracing(ev: &DebugEvent) {
    // `tracing` needs the level at compile time.
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: "veer_ebpf",
                $level,
                module = %ev.target,
                at = %ev.location,
                "{}",
                ev.message
            )
        };
    }
    match ev.level {
        tracing::Level::ERROR => emit!(tracing::Level::ERROR),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        tracing::Level::INFO => emit!(tracing::Level::INFO),
        tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
        tracing::Level::TRACE => emit!(tracing::Level::TRACE),
    }
}

/// Reader of the debug object's `AYA_LOGS` ring buffer (see the module documentation).
/// Records are decoded by aya-log and passed to `tracing`, or to the sink set with
/// [`DebugLog::set_sink`]. Nothing is read until [`DebugLog::flush`] or
/// [`DebugLog::spawn_drain`]; meanwhile the kernel drops what does not fit in the ring.
pub struct DebugLog {
    logger: EbpfLogger<Sink>,
    sink: Sink,
}

impl DebugLog {
    fn init(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let sink = Sink::default();
        let logger = EbpfLogger::init_with_logger(ebpf, sink.clone())?;
        Ok(Self { logger, sink })
    }

    /// Sends the events to `f` instead of `tracing` (for example a CLI that prints them).
    pub fn set_sink(&self, f: impl Fn(&DebugEvent) + Send + Sync + 'static) {
        *self.sink.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Reads and passes on every event waiting in the ring buffer.
    pub fn flush(&mut self) {
        self.logger.flush();
    }

    /// Drains the ring buffer on the current tokio runtime, as events arrive, until the task is
    /// aborted. Fails outside a tokio runtime.
    pub fn spawn_drain(self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::io::{Interest, unix::AsyncFd};
        let rt = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let _guard = rt.enter();
        // SAFETY: the descriptor is the ring buffer's, owned by `self.logger`; it stays open and
        // the same for as long as the `AsyncFd` owns `self`.
        let mut fd = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) }?;
        Ok(rt.spawn(async move {
            loop {
                let mut ready = match fd.readable_mut().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "debug events: polling the ring buffer failed");
                        return;
                    }
                };
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        }))
    }
}

impl AsRawFd for DebugLog {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

/// Where a mismatched pin of map `name` is moved aside.
pub fn stale_pin(maps_dir: &Path, name: &str) -> PathBuf {
    maps_dir.join(format!("{name}{}", paths::STALE_SUFFIX))
}

/// Whether a pin called `name` in the maps directory is a veer map of another version:
/// `VEER_<WHAT>_V<n>` that this build does not use (its maps were renamed by a version bump).
pub fn is_other_version(name: &str) -> bool {
    let versioned = name
        .strip_prefix("VEER_")
        .and_then(|r| r.rsplit_once("_V"))
        .is_some_and(|(what, v)| {
            !what.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
        });
    versioned && !layouts().iter().any(|l| l.name == name)
}

/// Removes the pins a layout migration left under `root`: maps moved aside as `<NAME>_stale`,
/// and maps of other versions (`VEER_<WHAT>_V<n>` names this build does not use). Call once
/// every pod runs the new programs: until then old programs may still use those maps. Returns
/// how many.
pub fn remove_stale_pins(root: &Path) -> usize {
    let maps_dir = root.join(paths::MAPS_DIR);
    let mut n = 0;
    for want in layouts() {
        let stale = stale_pin(&maps_dir, want.name);
        if fs::remove_file(&stale).is_ok() {
            tracing::info!(pin = %stale.display(), "old map of a layout migration removed");
            n += 1;
        }
    }
    for e in fs::read_dir(&maps_dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name.to_str().is_some_and(is_other_version) && fs::remove_file(e.path()).is_ok() {
            tracing::info!(pin = %e.path().display(), "map of another version removed");
            n += 1;
        }
    }
    n
}

/// The loaded object: programs and maps.
pub struct Dataplane {
    ebpf: Ebpf,
    root: Option<PathBuf>,
    debug: bool,
    debug_log: Option<DebugLog>,
}

impl Dataplane {
    /// Loads the default object with fresh, unpinned maps (tests, benchmarks).
    pub fn load_unpinned() -> Result<Self, DataplaneError> {
        Self::load_unpinned_with(false)
    }

    /// Like [`Dataplane::load_unpinned`]; `debug` loads the debug object ([`EBPF_DEBUG_OBJ`])
    /// and keeps a [`DebugLog`] for its events.
    pub fn load_unpinned_with(debug: bool) -> Result<Self, DataplaneError> {
        let ebpf = EbpfLoader::new().load(object(debug))?;
        Self::finish_load(ebpf, None, debug)
    }

    /// Loads the default object, reusing the maps pinned under `root/maps` when their layout
    /// matches and pinning new ones otherwise. Creates `root` with mode 0700.
    pub fn load_pinned(root: &Path) -> Result<Self, DataplaneError> {
        Self::load_pinned_with(root, false)
    }

    /// Like [`Dataplane::load_pinned`]; `debug` loads the debug object ([`EBPF_DEBUG_OBJ`]),
    /// which shares the pinned maps, and keeps a [`DebugLog`] for its events (its ring buffer
    /// is not pinned).
    pub fn load_pinned_with(root: &Path, debug: bool) -> Result<Self, DataplaneError> {
        let maps_dir = root.join(paths::MAPS_DIR);
        fs::create_dir_all(&maps_dir).map_err(|source| DataplaneError::Dir {
            path: maps_dir.clone(),
            source,
        })?;
        for dir in [root, maps_dir.as_path()] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                DataplaneError::Dir {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        }
        let mut loader = EbpfLoader::new();
        for want in layouts() {
            let pin = maps_dir.join(want.name);
            if pin.exists() {
                let info = MapInfo::from_pin(&pin).map_err(|source| DataplaneError::PinnedMap {
                    path: pin.clone(),
                    source,
                })?;
                if let Some(why) = layout_mismatch(&info, &want) {
                    let stale = stale_pin(&maps_dir, want.name);
                    tracing::warn!(map = want.name, %why, "pinned map has another layout; replacing it");
                    let _ = fs::remove_file(&stale);
                    fs::rename(&pin, &stale).map_err(|source| DataplaneError::Dir {
                        path: pin.clone(),
                        source,
                    })?;
                }
            }
            loader.map_pin_path(want.name, pin);
        }
        let ebpf = loader.load(object(debug))?;
        Self::finish_load(ebpf, Some(root.to_path_buf()), debug)
    }

    fn finish_load(
        mut ebpf: Ebpf,
        root: Option<PathBuf>,
        debug: bool,
    ) -> Result<Self, DataplaneError> {
        Self::load_programs(&mut ebpf)?;
        let debug_log = if debug {
            Some(DebugLog::init(&mut ebpf)?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            root,
            debug,
            debug_log,
        })
    }

    fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
        for name in [names::PROG_EGRESS, names::PROG_INGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(())
    }

    /// Removes maps moved aside by a layout migration.
    pub fn remove_stale(&self) {
        if let Some(root) = &self.root {
            remove_stale_pins(root);
        }
    }

    /// Whether this is the debug object ([`EBPF_DEBUG_OBJ`]).
    pub fn is_debug(&self) -> bool {
        self.debug
    }

    /// The reader of debug events, when the debug object is loaded.
    pub fn debug_log(&mut self) -> Option<&mut DebugLog> {
        self.debug_log.as_mut()
    }

    /// Takes the reader of debug events out (to move it into [`DebugLog::spawn_drain`]).
    pub fn take_debug_log(&mut self) -> Option<DebugLog> {
        self.debug_log.take()
    }

    /// The pin root, when pinned.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The egress or ingress program.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DataplaneError> {
        self.ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// The underlying aya object.
    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Takes a map out of the object (to wrap it in a typed view).
    pub fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
        self.ebpf
            .take_map(name)
            .ok_or(DataplaneError::MissingMap { name })
    }
}

/// The embedded object to load.
fn object(debug: bool) -> &'static [u8] {
    if debug { EBPF_DEBUG_OBJ } else { EBPF_OBJ }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_of_other_map_versions_are_recognised_and_current_ones_kept() {
        for l in layouts() {
            assert!(!is_other_version(l.name), "{} is current", l.name);
            let older = l.name.replace("_V1", "_V0");
            assert!(is_other_version(&older), "{older}");
            assert!(is_other_version(&l.name.replace("_V1", "_V12")));
            assert!(!is_other_version(&format!(
                "{}{}",
                l.name,
                paths::STALE_SUFFIX
            )));
        }
        for other in [
            "VEER_V1",
            "VEER__V1",
            "VEER_RULES4_V",
            "VEER_RULES4_Vx",
            "cilium_lb4_V1",
            "",
        ] {
            assert!(!is_other_version(other), "{other:?}");
        }
    }
}
