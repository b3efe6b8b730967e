//! The `veer` CLI against real pinned maps (root): entries are written through the agent's own
//! map types under a pin root of this test's own, the `veer` binary decodes them (`-o json`),
//! and `bpftool` shows the maps' BTF field names. The pin root and the status directory are
//! removed at the end, even on failure.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::PerCpuValues;
use ipnet::IpNet;
use serde_json::Value;
use veer_agent::{
    dataplane::Dataplane,
    maps::{Maps, monotonic_coarse_ns, rule4_key, rule6_key},
    report::index::{IndexEntry, RuleIndex, SlotName},
    report::{Mode, PodIface, PodReport, StatusFile},
};
use veer_common::{
    DIR_IN, DIR_OUT, FAMILY_V4, FLOW_REVNAT, FLOW_STEER, FlowKey, FlowValue, IFACE_F_GW4,
    IFACE_F_V4, IfaceInfo, IfaceKey, RULE_F_VIA, RuleStats, RuleValue, ST_EST,
};
use veer_tests::{ns::in_fresh_netns, privileged::require_root};

/// Removes a directory when dropped (also when the test panics).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f`, in a network namespace of its own, on the maps of veer's programs loaded and
/// pinned under `root`; the pins are removed afterwards, also when `f` panics.
fn with_pinned_maps(root: &Path, f: impl FnOnce(&mut Maps) + Send) {
    let _pins = RemoveOnDrop(root.to_path_buf());
    in_fresh_netns(|| {
        let mut dp = Dataplane::load_pinned(root).expect("load pinned");
        let mut maps = Maps::from_dataplane(&mut dp).expect("maps");
        f(&mut maps);
    });
}

/// The `veer` binary: `$VEER_BIN` when set (`cargo xtask test` builds it), else
/// `$CARGO_TARGET_DIR` (or `../target`)`/debug/veer`, built first when cargo is at hand (a no-op
/// when it is up to date).
fn veer_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("VEER_BIN").map(PathBuf::from)
        && b.exists()
    {
        return b;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "veer-agent",
            "--bin",
            "veer",
        ])
        .current_dir(manifest.join(".."))
        .env("CARGO_TARGET_DIR", &target)
        .status();
    let bin = target.join("debug/veer");
    assert!(
        bin.exists(),
        "{} missing (cargo build: {built:?}); run `cargo build -p veer-agent`",
        bin.display()
    );
    bin
}

fn veer(bin: &Path, root: &Path, status: &Path, args: &[&str]) -> Value {
    let out = Command::new(bin)
        .arg("--bpffs-root")
        .arg(root)
        .args(args)
        .args(if args[0] == "stats" {
            vec![]
        } else {
            vec!["--status-file".as_ref(), status.as_os_str()]
        })
        .args(["-o", "json"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run veer");
    assert!(
        out.status.success(),
        "veer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "veer {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a);
    b
}

const COOKIE: u64 = 424_242;
const ETH0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const ETH1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];

/// A rule entry: `rule_id`'s traffic leaves by `slot`.
fn rule(rule_id: u32, slot: u16) -> RuleValue {
    RuleValue {
        rule_id,
        slot,
        ..Default::default()
    }
}

/// Writes `value` for `prefix` (either family) in ruleset 1.
fn insert_rule(maps: &mut Maps, prefix: &str, value: RuleValue) {
    match prefix.parse().expect("a prefix") {
        IpNet::V4(n) => maps.rules4.insert(&rule4_key(1, n), value, 0),
        IpNet::V6(n) => maps.rules6.insert(&rule6_key(1, n), value, 0),
    }
    .unwrap_or_else(|e| panic!("insert {prefix}: {e}"));
}

/// Writes a pod (eth0 if2 10.0.0.5, eth1 if3 10.124.2.5 gw 10.124.2.1), three rules, their
/// counters and a steered TCP flow (both entries).
fn populate(maps: &mut Maps) {
    let via = {
        let mut v = [0u8; 16];
        v[..4].copy_from_slice(&[10, 124, 0, 1]);
        v
    };
    insert_rule(
        maps,
        "10.86.0.0/16",
        RuleValue {
            flags: RULE_F_VIA,
            via,
            ..rule(7, 1)
        },
    );
    insert_rule(maps, "0.0.0.0/0", rule(8, 0));
    insert_rule(maps, "fd00:86::/64", rule(9, 1));
    let cpus = aya::util::nr_cpus().unwrap();
    maps.rule_stats
        .set(
            7,
            PerCpuValues::try_from(vec![
                RuleStats {
                    packets: 3,
                    bytes: 300,
                };
                cpus
            ])
            .unwrap(),
            0,
        )
        .unwrap();
    let mut slots = [0u32; 8];
    slots[0] = 2;
    slots[1] = 3;
    let mut slot_macs = [[0u8; 6]; 8];
    slot_macs[0] = ETH0_MAC;
    slot_macs[1] = ETH1_MAC;
    let eth0 = IfaceInfo {
        netns_cookie: COOKIE,
        ruleset: 1,
        slot: 0,
        ifindex: 2,
        mtu: 1500,
        mac: ETH0_MAC,
        flags: IFACE_F_V4,
        addr4: [10, 0, 0, 5],
        slots,
        slot_macs,
        ..Default::default()
    };
    let eth1 = IfaceInfo {
        slot: 1,
        ifindex: 3,
        mtu: 1400,
        mac: ETH1_MAC,
        flags: IFACE_F_V4 | IFACE_F_GW4,
        addr4: [10, 124, 2, 5],
        gw4: [10, 124, 2, 1],
        ..eth0
    };
    maps.ifaces
        .insert(IfaceKey::new(2, ETH0_MAC), eth0, 0)
        .unwrap();
    maps.ifaces
        .insert(IfaceKey::new(3, ETH1_MAC), eth1, 0)
        .unwrap();
    let now = monotonic_coarse_ns();
    let out = FlowKey {
        saddr: v4([10, 0, 0, 5]),
        daddr: v4([10, 86, 1, 2]),
        sport: 40_000u16.to_be(),
        dport: 443u16.to_be(),
        proto: 6,
        family: FAMILY_V4,
        dir: DIR_OUT,
        ..Default::default()
    };
    let steer = FlowValue {
        kind: FLOW_STEER,
        state: ST_EST,
        rule_id: 7,
        ifindex: 3,
        mss: 1360,
        mtu: 1400,
        addr: v4([10, 124, 2, 5]),
        nexthop: v4([10, 124, 0, 1]),
        last_seen_ns: now - 2_000_000_000,
        created_ns: now - 30_000_000_000,
        ..Default::default()
    };
    let back = out.reverse(v4([10, 124, 2, 5]), DIR_IN);
    let revnat = FlowValue {
        kind: FLOW_REVNAT,
        ifindex: 2,
        addr: v4([10, 0, 0, 5]),
        mac: ETH0_MAC,
        ..steer
    };
    maps.flows.insert(out, steer, 0).unwrap();
    maps.flows.insert(back, revnat, 0).unwrap();
}

/// The status file and rule index an agent would have written for [`populate`].
fn write_status(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let status = dir.join("status.json");
    let mut s = StatusFile::new(Mode::Standalone, 3);
    s.last_round_ms = 2;
    s.slots = vec![
        SlotName {
            dev: "eth0".into(),
            slot: 0,
        },
        SlotName {
            dev: "eth1".into(),
            slot: 1,
        },
    ];
    s.rules = 3;
    s.routes = vec!["demo".into()];
    let iface = |name: &str, ifindex, slot| PodIface {
        name: name.into(),
        ifindex: Some(ifindex),
        slot: Some(slot),
    };
    s.pods = vec![PodReport {
        pod: "default/web".into(),
        uid: "u1".into(),
        netns: Some("/var/run/netns/web-test".into()),
        netns_cookie: Some(COOKIE),
        ruleset: Some(1),
        routes: vec!["demo".into()],
        interfaces: vec![iface("eth0", 2, 0), iface("eth1", 3, 1)],
        ..Default::default()
    }];
    std::fs::write(&status, serde_json::to_vec(&s).unwrap()).unwrap();
    let entry =
        |prefix: &str, rule_id, path: &str, dev: &str, slot, via: Option<IpAddr>| IndexEntry {
            ruleset: 1,
            prefix: prefix.parse().unwrap(),
            rule_id,
            route: "demo".into(),
            path: path.into(),
            service: None,
            dev: dev.into(),
            slot,
            via,
        };
    let index = RuleIndex {
        slots: vec![
            SlotName {
                dev: "eth0".into(),
                slot: 0,
            },
            SlotName {
                dev: "eth1".into(),
                slot: 1,
            },
        ],
        entries: vec![
            entry(
                "10.86.0.0/16",
                7,
                "spec.route[0]",
                "eth1",
                1,
                Some(IpAddr::V4(Ipv4Addr::new(10, 124, 0, 1))),
            ),
            entry("0.0.0.0/0", 8, "spec.route[1]", "eth0", 0, None),
            entry("fd00:86::/64", 9, "spec.route[2]", "eth1", 1, None),
        ],
        ..Default::default()
    };
    index
        .write_atomic(&veer_agent::report::index::path_for_status(&status))
        .unwrap();
    status
}

#[test]
fn cli_decodes_pinned_maps_status_flows_and_traces() {
    if !require_root("cli_decodes_pinned_maps_status_flows_and_traces") {
        return;
    }
    let bin = veer_bin();
    let pid = std::process::id();
    let root = PathBuf::from(format!("/sys/fs/bpf/veer-cli-test-{pid}"));
    let dir = std::env::temp_dir().join(format!("veer-cli-test-{pid}"));
    let _files = RemoveOnDrop(dir.clone());
    with_pinned_maps(&root, |maps| {
        populate(maps);
        let status = write_status(&dir);
        let run = |args: &[&str]| veer(&bin, &root, &status, args);

        // status
        let s = run(&["status"]);
        assert_eq!(s["agent"]["state"], "running", "{s:#}");
        assert_eq!(s["agent"]["round"], 3);
        assert_eq!(s["pods"][0]["pod"], "default/web");
        assert_eq!(s["pods"][0]["interfaces"][1]["name"], "eth1");
        assert_eq!(s["routes"][0]["name"], "demo");
        assert_eq!(s["routes"][0]["applied"], 3);
        let cpus = aya::util::nr_cpus().unwrap() as u64;
        assert_eq!(s["routes"][0]["packets"], 3 * cpus);
        let occ: Vec<(String, u64)> = s["maps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["map"].as_str().unwrap().to_string(),
                    m["entries"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            occ,
            [
                ("VEER_RULES4_V1".to_string(), 2),
                ("VEER_RULES6_V1".to_string(), 1),
                ("VEER_IFACES_V1".to_string(), 2),
                ("VEER_FLOWS_V1".to_string(), 2),
                ("VEER_RSTATS_V1".to_string(), 3),
            ]
        );
        assert_eq!(s["drops_and_errors"]["drop_too_big"], 0);

        // maps
        let m = run(&["maps"]);
        let rules = m["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        let r = rules
            .iter()
            .find(|r| r["prefix"] == "10.86.0.0/16")
            .unwrap();
        assert_eq!(r["dev"], "eth1");
        assert_eq!(r["via"], "10.124.0.1");
        assert_eq!(r["route"], "demo");
        assert_eq!(r["entry"], "spec.route[0]");
        assert_eq!(r["packets"], 3 * cpus);
        assert_eq!(r["bytes"], 300 * cpus);
        assert_eq!(r["in_index"], true);
        let r6 = rules.iter().find(|r| r["family"] == "ipv6").unwrap();
        assert_eq!(r6["prefix"], "fd00:86::/64");
        let ifs = m["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2);
        let e1 = ifs.iter().find(|i| i["ifindex"] == 3).unwrap();
        assert_eq!(e1["pod"], "default/web");
        assert_eq!(e1["dev"], "eth1");
        assert_eq!(e1["gw4"], "10.124.2.1");
        assert_eq!(e1["mac"], "02:00:00:00:00:03");
        assert_eq!(m["config"]["tcp_est_timeout_s"], 21_600);

        // flows
        let f = run(&["flows"]);
        let flows = f.as_array().unwrap();
        assert_eq!(flows.len(), 2);
        let o = flows.iter().find(|x| x["direction"] == "out").unwrap();
        assert_eq!(o["kind"], "steer");
        assert_eq!(o["state"], "established");
        assert_eq!(
            (o["src"].as_str(), o["sport"].as_u64()),
            (Some("10.0.0.5"), Some(40_000))
        );
        assert_eq!(
            (o["dst"].as_str(), o["dport"].as_u64()),
            (Some("10.86.1.2"), Some(443))
        );
        assert_eq!(o["dev"], "eth1");
        assert_eq!(o["pod"], "default/web");
        assert_eq!(o["route"], "demo");
        let age = o["age_s"].as_f64().unwrap();
        assert!((29.0..60.0).contains(&age), "age {age}");
        let i = flows.iter().find(|x| x["direction"] == "in").unwrap();
        assert_eq!(
            (i["kind"].as_str(), i["dev"].as_str()),
            (Some("revnat"), Some("eth0"))
        );

        // trace: steered, with the pinned flow
        let t = run(&["trace", "--pod", "default/web", "--dst", "10.86.1.2:443"]);
        assert_eq!(t["verdict"], "steer", "{t:#}");
        assert_eq!(t["matched"]["route"], "demo");
        assert_eq!(t["matched"]["entry"], "spec.route[0]");
        assert_eq!(t["out_interface"]["name"], "eth1");
        assert_eq!(t["next_hop"]["addr"], "10.124.0.1");
        assert_eq!(t["next_hop"]["source"], "via");
        assert_eq!(t["source_address"], "10.124.2.5");
        assert_eq!(t["live"]["agrees"], true);
        assert_eq!(t["pinned_flows"].as_array().unwrap().len(), 1);
        // no IPv6 default: no match
        let t = run(&["trace", "--pod", "default/web", "--dst", "2001:db8::1"]);
        assert_eq!(t["counter"], "pass_no_rule");
        // never steered
        let t = run(&[
            "trace",
            "--pod",
            "web",
            "--dst",
            "224.0.0.251",
            "--proto",
            "udp",
        ]);
        assert_eq!(t["verdict"], "never_steered");

        // The live map changed behind the agent's back: trace notices.
        insert_rule(maps, "10.86.1.0/24", rule(11, 0));
        let t = run(&["trace", "--pod", "default/web", "--dst", "10.86.1.2"]);
        assert_eq!(t["live"]["agrees"], false, "{t:#}");
        assert_eq!(t["live"]["matched"]["prefix"], "10.86.1.0/24");
        let m = run(&["maps"]);
        let extra = m["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prefix"] == "10.86.1.0/24")
            .unwrap()
            .clone();
        assert_eq!(
            (extra["in_index"].as_bool(), extra["route"].is_null()),
            (Some(false), true)
        );

        // stats keeps working
        let st = run(&["stats"]);
        assert_eq!(st["steer_new"], 0);
    });
}

#[test]
fn bpftool_dump_shows_btf_field_names() {
    if !require_root("bpftool_dump_shows_btf_field_names") {
        return;
    }
    let root = PathBuf::from(format!("/sys/fs/bpf/veer-cli-btf-{}", std::process::id()));
    with_pinned_maps(&root, |maps| {
        insert_rule(maps, "10.86.0.0/16", rule(7, 1));
        let pin = root.join("maps/VEER_RULES4_V1");
        let out = veer_tests::programs::command("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&pin)
            .output()
            .expect("run bpftool (cargo xtask setup installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for field in [
            "\"ruleset_be\"",
            "\"addr\"",
            "\"rule_id\"",
            "\"slot\"",
            "\"via\"",
        ] {
            assert!(text.contains(field), "{field} missing from:\n{text}");
        }
    });
}
