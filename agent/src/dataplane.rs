//! Loading the eBPF object and owning its maps.
//!
//! Maps are pinned under `<root>/maps/<NAME>` (see [`veer_common::paths`]). Before a pinned map
//! is reused, its type, key size, value size, capacity and flags are compared with what this
//! build expects; aya 0.14 would otherwise reuse a map of another layout silently. A mismatched
//! pin (a layout change without a version bump, or a capacity change) is moved aside as
//! `<NAME>.stale` and a fresh map takes its place; programs still attached keep using the old
//! map until they are re-attached, after which [`Dataplane::remove_stale`] drops it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, MapInfo, MapType},
    programs::{ProgramError, SchedClassifier},
};
use veer_common::{
    Config, FlowKey, FlowValue, IfaceInfo, IfaceKey, Rule4Key, Rule6Key, RuleStats, RuleValue,
    maps as names, paths, stats,
};

use crate::EBPF_OBJ;

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
pub fn layouts() -> [Layout; 7] {
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

/// The loaded object: programs and maps.
pub struct Dataplane {
    ebpf: Ebpf,
    root: Option<PathBuf>,
}

impl Dataplane {
    /// Loads the object with fresh, unpinned maps (tests, benchmarks).
    pub fn load_unpinned() -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJ)?;
        Self::load_programs(&mut ebpf)?;
        Ok(Self { ebpf, root: None })
    }

    /// Loads the object, reusing the maps pinned under `root/maps` when their layout matches
    /// and pinning new ones otherwise. Creates `root` with mode 0700.
    pub fn load_pinned(root: &Path) -> Result<Self, DataplaneError> {
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
                    let stale = maps_dir.join(format!("{}.stale", want.name));
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
        let mut ebpf = loader.load(EBPF_OBJ)?;
        Self::load_programs(&mut ebpf)?;
        Ok(Self {
            ebpf,
            root: Some(root.to_path_buf()),
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
            for want in layouts() {
                let _ = fs::remove_file(
                    root.join(paths::MAPS_DIR)
                        .join(format!("{}.stale", want.name)),
                );
            }
        }
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
