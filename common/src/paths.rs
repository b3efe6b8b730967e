//! Every bpffs path veer uses. Nothing else in the project builds a path under `/sys/fs/bpf`.
//!
//! Layout (the root is configurable for tests; `DEFAULT_ROOT` in production):
//! ```text
//! <root>/                      mode 0700
//!   maps/<MAP NAME>            pinned maps, shared by every pod on the node
//!   links/<netns cookie>/<ifindex>_<egress|ingress>   pinned TCX links of one pod interface
//! ```

/// Where bpffs is mounted on every Linux node.
pub const BPFFS: &str = "/sys/fs/bpf";
/// veer's own directory in bpffs.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/veer";
/// Sub-directory of the root holding the pinned maps.
pub const MAPS_DIR: &str = "maps";
/// Sub-directory of the root holding the pinned links, one directory per pod netns cookie.
pub const LINKS_DIR: &str = "links";
/// Suffix of a map pin moved aside by a layout migration (`<MAP NAME>_stale`; bpffs refuses
/// names containing a dot).
pub const STALE_SUFFIX: &str = "_stale";
/// Suffix of an egress link pin.
pub const EGRESS_SUFFIX: &str = "egress";
/// Suffix of an ingress link pin.
pub const INGRESS_SUFFIX: &str = "ingress";
