//! The agent's input layer: what operators and the node say, turned into desired rules.
//!
//! - [`route`]: the `Route` CRD types (`routes.k8s.ovn.org/v1`) and their validation;
//! - [`load`]: Route files (JSON/YAML, multi-document, `kind: List`, shorthand entries) and
//!   directories, with per-file results and errors that name file, document, object, field
//!   and value;
//! - [`services`]: Services and EndpointSlices supplied as files, and the [`ServiceIndex`]
//!   that resolves a Service to its addresses;
//! - [`cni`]: the pods of the node from the CNI result cache (`/var/lib/cni/results/*-lo`);
//! - [`compile`](mod@compile): Routes + Service addresses → per-ruleset trie entries with
//!   slots, rule ids, provenance and conflict reports, and the [`diff`] between two
//!   compilations.
//!
//! Everything here is pure host code (files in, values out); nothing touches the maps.

pub mod cni;
pub mod compile;
pub mod load;
pub mod route;
pub mod services;

pub use cni::{PodSandbox, scan_dir};
pub use compile::{Compiled, Diff, Ruleset, compile, compile_all_pods, diff};
pub use load::{LoadError, LoadedRoute, RouteFile, RouteSet, load_dir, load_file, load_str};
pub use route::{RouteSpec, RouteStatus};
pub use services::{ServiceIndex, ServiceLookup, Unresolved};
