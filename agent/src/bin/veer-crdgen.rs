//! Prints the `routes.k8s.ovn.org` CustomResourceDefinition generated from the Rust types.
//!
//! `cargo run -p veer-agent --bin veer-crdgen > manifests/crd.yaml`; `agent/tests/crd.rs`
//! fails when the committed file differs from this output.

fn main() {
    print!("{}", veer_agent::k8s::crd::crd_yaml());
}
