//! `veer trace`: how a pod's packet to a destination would be handled, from the pinned maps
//! (the live trie and the pod's flows) and the agent's files (the pod and its rules).

use std::path::Path;

use crate::{
    cli::trace::{self as report, Proto, TraceInput},
    error_chain,
    lpm::RefRules,
    netns::netns_cookie,
};

use super::{AgentFiles, Format, flows, open_maps, print, snapshot};

/// Prints the explanation for `pod` (`namespace/name` or a namespace path) sending `proto` to
/// `dst` (`<ip>`, `<ipv4>:<port>` or `[<ipv6>]:<port>`).
pub fn run(
    root: &Path,
    status_file: &Path,
    pod: &str,
    dst: &str,
    proto: Proto,
    format: Format,
) -> anyhow::Result<()> {
    let (dst, port) = report::parse_dst(dst).map_err(anyhow::Error::msg)?;
    let (_, files) = AgentFiles::load(status_file);
    let pods = files.pods();
    let cookie_of = |p: &Path| -> Result<u64, String> {
        match netns_cookie(p) {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("reading the cookie of {}: {e}", p.display())),
            Err(e) => Err(error_chain(&e)),
        }
    };
    let (label, cookie, status_pod) =
        report::resolve_pod(pod, &pods, &cookie_of).map_err(anyhow::Error::msg)?;
    let maps = open_maps(root)?;
    let snap = snapshot(&maps, true)?;
    let ifaces: Vec<_> = snap
        .ifaces
        .iter()
        .filter(|(_, v)| Some(v.netns_cookie) == cookie)
        .copied()
        .collect();
    let slots = files.slots();
    let ruleset = ifaces
        .first()
        .map(|(_, v)| v.ruleset)
        .or(status_pod.and_then(|p| p.ruleset));
    let live = ruleset.map(|rs| maps.longest_match(rs, dst).ok());
    let mut live_rules = RefRules::new();
    for r in &snap.rules {
        live_rules.insert(r.ruleset, r.prefix, r.value);
    }
    let pod_flows = report::pod_flows(&snap.flows, &ifaces, dst, port, proto);
    let flow_rows = flows::rows(&snap, &pod_flows, &files);
    let r = report::explain(&TraceInput {
        pod: label,
        netns_cookie: cookie,
        ifaces: &ifaces,
        status_pod,
        slots: &slots,
        index: files.index.as_ref().ok(),
        live,
        live_rules: Some(&live_rules),
        dst,
        port,
        proto,
        flows: &flow_rows,
    });
    print(format, &r, report::render)
}
