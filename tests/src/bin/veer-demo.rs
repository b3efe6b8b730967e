//! `cargo xtask demo`: veer steering the seed's example route table, end to end, in namespaces
//! of its own.
//!
//! It builds a dual-CNI pod (Calico `eth0`, OVN `eth1`, or the name given with `--second`), a
//! node, an OVN gateway with port security and a server namespace holding the seed's
//! destinations; writes the seed's demo Route plus the rest of the seed's table (with a
//! default-route rule; IPv4 only, as the seed is: [`veer_tests::seed`]) to a Route file, the
//! Services to a Services file and the pod's CNI cache file; runs the real `veer run` agent on
//! them; sends TCP, UDP and ping to one address per rule; and prints which interface the traffic
//! left by, as seen by the server. Then it moves the default route to `eth1` by editing the
//! Route file (the agent hot-reloads it) and prints the table again. Everything is removed at
//! the end (also on failure). Exit status: 0 when every row is right, 1 otherwise, 2 when it
//! cannot run.
//!
//! Needs root and the `veer` binary (`cargo build -p veer-agent --bin veer`, or `VEER_BIN`).

use std::{collections::BTreeSet, net::IpAddr, process::ExitCode, time::Instant};

use veer_tests::{
    agent::{self, Agent},
    privileged::is_root,
    seed::{self, Seed},
    topology::{Pod, SVC_ETH0_4, SVC_ETH1_4, Topology},
};

/// One row per rule of `seed`: label (with the address probed), the address, the interface
/// expected.
fn rows(seed: &Seed) -> Vec<(String, IpAddr, String)> {
    seed.destinations()
        .into_iter()
        .map(|d| (format!("{} ({})", d.label, d.addr), d.addr, d.dev))
        .collect()
}

/// Sends TCP, UDP and a ping to each row's address and prints the table; true if all rows
/// are right.
fn table(topo: &Topology, pod: &Pod, rows: &[(String, IpAddr, String)]) -> bool {
    let head = [
        "destination",
        "expected interface",
        "observed interface",
        "source seen by server",
        "OK",
    ];
    let mut lines: Vec<[String; 5]> = Vec::new();
    let mut all_ok = true;
    for (label, dst, want) in rows {
        let p = seed::probe(topo, pod, *dst);
        let icmp = match p.icmp[..] {
            [src] if p.ping => Some(src),
            _ => None,
        };
        let sources = [p.tcp.ok(), p.udp.ok(), icmp];
        let ifaces: BTreeSet<String> = sources
            .iter()
            .map(|s| {
                s.and_then(|a| pod.iface_of(a).map(String::from))
                    .unwrap_or_else(|| "none".into())
            })
            .collect();
        let srcs: BTreeSet<String> = sources
            .iter()
            .map(|s| s.map_or_else(|| "-".into(), |a| a.to_string()))
            .collect();
        let ok = ifaces.len() == 1 && ifaces.contains(want);
        all_ok &= ok;
        lines.push([
            label.clone(),
            want.clone(),
            ifaces.into_iter().collect::<Vec<_>>().join("/"),
            srcs.into_iter().collect::<Vec<_>>().join("/"),
            if ok { "OK" } else { "WRONG" }.into(),
        ]);
    }
    let mut w = head.map(str::len);
    for l in &lines {
        for (i, c) in l.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let row = |cells: &[String]| {
        let v: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("| {} |", v.join(" | "));
    };
    row(&head.map(String::from));
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for l in &lines {
        row(l);
    }
    println!(
        "(TCP, UDP and ICMP echo each; \"observed\" is the interface owning the source address the server saw)"
    );
    all_ok
}

fn run(second: &str) -> Result<bool, String> {
    println!(
        "== building the seed example: pod (eth0 = Calico, {second} = OVN), node, OVN gateway, servers"
    );
    // The seed's own table: IPv4 only, the default route by eth0.
    let seed = Seed::new(second).ipv4_only();
    let topo = seed.topology();
    let pod = topo.pod0().clone();
    println!(
        "   pod netns {}: eth0 {} / {} (MTU {}), {second} {} / {} (MTU {}), default via 169.254.1.1 dev eth0",
        pod.path().display(),
        pod.v4,
        pod.v6,
        topo.opts.calico_mtu,
        pod.ovn4,
        pod.ovn6,
        topo.opts.ovn_mtu
    );

    let mut agent = Agent::new();
    agent.write_services(&seed.services());
    let first = seed.yaml();
    agent.write_routes(&first);
    agent.add_topology_pod(&pod);
    println!("== Route file {}:\n{first}", agent.routes.display());
    println!(
        "== Services file {}: default/nginx = {SVC_ETH1_4}, kube-system/nginx1 = {SVC_ETH0_4} \
         (kube-system/nginx2 is not in it: reported unresolved, skipped)",
        agent.services.display()
    );
    println!(
        "== starting {} run (bpffs root {}, CNI cache {})",
        agent::veer_bin().display(),
        agent.bpffs_root.display(),
        agent.cni_dir.display()
    );
    agent.start();
    agent.wait_pod_managed(&pod.path(), &["eth0", second]);
    seed.wait_applied(&agent)?;
    if let Some(s) = agent.status() {
        println!(
            "   agent: round {}, slots {:?}, {} rules, issues {:?}",
            s.get("round").as_u64().unwrap_or(0),
            Agent::slots(&s),
            s.get("rules").as_u64().unwrap_or(0),
            s.get("issues")
                .items()
                .iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
        );
    }

    println!("\n== 1. the seed's route table (default route by eth0)\n");
    let ok1 = table(&topo, &pod, &rows(&seed));

    println!("\n== 2. editing the Route file: 0.0.0.0/0 → {second} (hot reload, no restart)\n");
    let moved = seed.clone().default_to(second);
    agent.write_routes(&moved.yaml());
    let t = Instant::now();
    moved.wait_applied(&agent)?;
    println!("   applied in {:?}\n", t.elapsed());
    let ok2 = table(&topo, &pod, &rows(&moved));

    println!(
        "\n== cleaning up (agent, pins under {}, namespaces)",
        agent.bpffs_root.display()
    );
    drop(agent);
    drop(topo);
    Ok(ok1 && ok2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let second = match args.as_slice() {
        [] => "eth1".to_string(),
        [flag, name] if flag == "--second" => name.clone(),
        _ => {
            eprintln!("usage: veer-demo [--second <name of the OVN interface, default eth1>]");
            return ExitCode::from(2);
        }
    };
    if !is_root() {
        eprintln!("veer-demo needs root (BPF, network namespaces): run `sudo cargo xtask demo`");
        return ExitCode::from(2);
    }
    match run(&second) {
        Ok(true) => {
            println!("all rows OK");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("some rows are WRONG");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("veer-demo: {e}");
            ExitCode::from(2)
        }
    }
}
