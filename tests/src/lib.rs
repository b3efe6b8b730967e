//! Shared fixtures of veer's test layers.
//!
//! - [`packet`]: frame builders and an independent checksum verifier;
//! - [`privileged`]: the root check every privileged test starts with (fails under `CI=true`);
//! - [`ns`]: running a test body inside a brand-new network namespace of its own;
//! - [`harness`]: the loaded programs with fresh maps, for `BPF_PROG_TEST_RUN` suites;
//! - [`topology`]: dual-CNI pods, a node, an OVN gateway and servers made of network namespaces;
//! - [`agent`]: the real `veer` agent binary run on files written by the test;
//! - [`promql`]: metric names and labels of the monitoring manifests' PromQL expressions.
//! - [`apiserver`]: a real etcd and kube-apiserver on loopback, with admin and ServiceAccount
//!   clients.

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod harness;
pub mod ns;
pub mod packet;
pub mod privileged;
pub mod programs;
pub mod promql;
pub mod seed;
pub mod topology;
