//! The real `veer` agent binary, run by end-to-end tests exactly as on a node (standalone mode).
//!
//! An [`Agent`] owns a temporary directory with the agent's inputs — a Route file, a Services
//! file (the `kubectl get svc -A -o yaml` `kind: List` form) and a CNI result cache with one
//! `cni-loopback-<id>-lo` file per pod — and runs `veer run` on them with a bpffs root of its
//! own (`/sys/fs/bpf/veer-e2e-<pid>-<n>`), a status file, and a 1 s resync. It reads the status
//! file to know what the agent did, can `kill -9` and restart it, and on drop kills it, runs
//! `veer cleanup` on its bpffs root (removing every pin, which detaches the links) and removes
//! the directories, also when the test panics (then it prints the agent's log).
//!
//! The binary is found by [`veer_bin`]: `$VEER_BIN`, else `veer` next to the running test
//! executable (`<target>/<profile>/deps/..`), else under `$CARGO_TARGET_DIR` or the workspace
//! `target/`. `cargo xtask test` builds it first; by hand: `cargo build -p veer-agent --bin veer`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use veer_agent::maps::Maps;
use veer_common::{IfaceInfo, IfaceKey, RuleValue, paths};

use crate::topology::Pod;

/// Prefix of every bpffs root an [`Agent`] makes (`<prefix><pid>-<n>`).
pub const BPFFS_PREFIX: &str = "/sys/fs/bpf/veer-e2e-";
const TMP_PREFIX: &str = "veer-e2e-";

/// How long the waits on the agent last before failing the test.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of the `veer` binary (see the module docs). Panics with how to build it.
pub fn veer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VEER_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join("veer"));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    for profile in ["debug", "release"] {
        candidates.push(target.join(profile).join("veer"));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no veer binary (looked at {candidates:?}): build it with \
                 `cargo build -p veer-agent --bin veer` (same CARGO_TARGET_DIR) or set VEER_BIN"
            )
        })
}

/// A parsed JSON value (the status file, `bpftool -j`): just enough JSON for the tests, so the
/// tests crate needs no JSON dependency.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    /// Parses a JSON text.
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(v)
    }

    /// Field `key` of an object (`Null` when absent or not an object).
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    /// Elements of an array (empty when not an array).
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Arr(v) => v,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'n') => self.lit("null", Json::Null),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return self.err("expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(v));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return self.err("expected :");
                    }
                    self.i += 1;
                    v.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(v));
                        }
                        _ => return self.err("expected , or }"),
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Json::Num)
                    .map_or_else(|| self.err("bad number"), Ok)
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let t = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        match t {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut b = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).or_else(|_| self.err("invalid UTF-8"))
    }
}

/// A Route object (CR form, `apiVersion: k8s.ovn.org/v1`) as YAML: `routes` are `(dst, dev)`,
/// `svcs` are `(namespace, name, dev)`.
pub fn route_cr(name: &str, routes: &[(&str, &str)], svcs: &[(&str, &str, &str)]) -> String {
    let mut y =
        format!("apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata:\n  name: {name}\nspec:\n");
    y.push_str(if routes.is_empty() {
        "  route: []\n"
    } else {
        "  route:\n"
    });
    for (dst, dev) in routes {
        y.push_str(&format!("    - dst: \"{dst}\"\n      dev: \"{dev}\"\n"));
    }
    y.push_str(if svcs.is_empty() {
        "  svc: []\n"
    } else {
        "  svc:\n"
    });
    for (ns, n, dev) in svcs {
        y.push_str(&format!(
            "    - namespace: \"{ns}\"\n      name: \"{n}\"\n      dev: \"{dev}\"\n"
        ));
    }
    y
}

/// Shorthand entries as a JSON array: `routes` are `(cidr, dev)`, `svcs` are
/// `("namespace/name", dev)`.
pub fn shorthand(routes: &[(&str, &str)], svcs: &[(&str, &str)]) -> String {
    let mut v: Vec<String> = routes
        .iter()
        .map(|(c, d)| format!("  {{\"route\": \"{c}\", \"dev\": \"{d}\"}}"))
        .collect();
    v.extend(
        svcs.iter()
            .map(|(s, d)| format!("  {{\"svc\": \"{s}\", \"dev\": \"{d}\"}}")),
    );
    format!("[\n{}\n]\n", v.join(",\n"))
}

/// A Services file as `kubectl get svc -A -o yaml` prints it (`kind: List`), each Service
/// `(namespace, name, cluster IPs)`.
pub fn services_list(svcs: &[(&str, &str, &[IpAddr])]) -> String {
    let mut y =
        String::from("apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n");
    for (ns, name, ips) in svcs {
        let fam = |a: &IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        y.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {name}\n    namespace: {ns}\n  spec:\n    clusterIP: {}\n    clusterIPs:\n",
            ips[0]
        ));
        for a in *ips {
            y.push_str(&format!("    - {a}\n"));
        }
        y.push_str("    ipFamilies:\n");
        for a in *ips {
            y.push_str(&format!("    - {}\n", fam(a)));
        }
        y.push_str(&format!(
            "    ipFamilyPolicy: {}\n    ports:\n    - port: 80\n      protocol: TCP\n      targetPort: 80\n    type: ClusterIP\n  status:\n    loadBalancer: {{}}\n",
            if ips.len() > 1 { "PreferDualStack" } else { "SingleStack" }
        ));
    }
    y
}

/// A CNI cache file of the loopback plugin for a pod (the `cniCacheV1` format of
/// `/var/lib/cni/results/cni-loopback-<id>-lo`, as in `tests/fixtures/seed`).
pub fn cni_loopback(
    container_id: &str,
    namespace: &str,
    name: &str,
    uid: &str,
    netns: &Path,
) -> String {
    format!(
        r#"{{
  "kind": "cniCacheV1",
  "containerId": "{container_id}",
  "config": "ewoiY25pVmVyc2lvbiI6ICIwLjMuMSIsCiJuYW1lIjogImNuaS1sb29wYmFjayIsCiJwbHVnaW5zIjogW3sKICAidHlwZSI6ICJsb29wYmFjayIKfV0KfQ==",
  "ifName": "lo",
  "networkName": "cni-loopback",
  "cniArgs": [
    ["K8S_POD_NAMESPACE", "{namespace}"],
    ["K8S_POD_NAME", "{name}"],
    ["K8S_POD_INFRA_CONTAINER_ID", "{container_id}"],
    ["K8S_POD_UID", "{uid}"],
    ["IgnoreUnknown", "1"]
  ],
  "result": {{
    "cniVersion": "0.3.1",
    "dns": {{}},
    "interfaces": [
      {{"mac": "00:00:00:00:00:00", "name": "lo", "sandbox": "{sandbox}"}}
    ],
    "ips": [
      {{"address": "127.0.0.1/8", "interface": 0, "version": ""}},
      {{"address": "::1/128", "interface": 0, "version": ""}}
    ]
  }}
}}
"#,
        sandbox = netns.display()
    )
}

/// The rule tries' entries: (ruleset, destination) → value.
pub fn rules(maps: &Maps) -> BTreeMap<(u32, IpNet), RuleValue> {
    let mut out = BTreeMap::new();
    for r in maps.rules4.iter() {
        let (k, v) = r.expect("reading VEER_RULES4_V1");
        let (rs, net) = veer_agent::maps::decode_rule4(&k).expect("prefix");
        out.insert((rs, IpNet::V4(net)), v);
    }
    for r in maps.rules6.iter() {
        let (k, v) = r.expect("reading VEER_RULES6_V1");
        let (rs, net) = veer_agent::maps::decode_rule6(&k).expect("prefix");
        out.insert((rs, IpNet::V6(net)), v);
    }
    out
}

/// The interface entries.
pub fn ifaces(maps: &Maps) -> BTreeMap<(u32, [u8; 6]), IfaceInfo> {
    maps.ifaces
        .iter()
        .map(|r| {
            let (k, v): (IfaceKey, IfaceInfo) = r.expect("reading VEER_IFACES_V1");
            ((k.ifindex, k.mac), v)
        })
        .collect()
}

/// Every BPF link on the machine as (link id, program id) (`bpftool -j link list`).
pub fn live_links() -> BTreeMap<u64, u64> {
    let out = crate::programs::command("bpftool")
        .args(["-j", "link", "list"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool link list failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = Json::parse(text.trim()).unwrap_or_else(|e| panic!("bpftool output: {e}"));
    v.items()
        .iter()
        .filter_map(|l| {
            Some((
                l.get("id").as_u64()?,
                l.get("prog_id").as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

/// Ids of every BPF link on the machine.
pub fn live_link_ids() -> BTreeSet<u64> {
    live_links().into_keys().collect()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Removes bpffs roots and temporary directories of `veer-e2e-<pid>-…` runs whose process is
/// gone (a test run that was killed).
fn remove_stale(tmp: &Path) {
    let stale = |name: &str| {
        name.strip_prefix(TMP_PREFIX)
            .and_then(|r| r.split('-').next())
            .is_some_and(|pid| !pid.is_empty() && !pid_alive(pid))
    };
    if let Ok(rd) = fs::read_dir(paths::BPFFS) {
        for e in rd.flatten() {
            if stale(&e.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(tmp) {
        for e in rd.flatten() {
            if stale(&e.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// One pod's CNI cache entry written by [`Agent::add_pod`].
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: PathBuf,
    pub file: PathBuf,
}

/// The real agent and its inputs; see the module docs.
pub struct Agent {
    /// The temporary directory holding everything below.
    pub dir: PathBuf,
    /// The Route file (`--routes`).
    pub routes: PathBuf,
    /// The Services file (`--services`).
    pub services: PathBuf,
    /// The CNI result cache (`--cni-dir`).
    pub cni_dir: PathBuf,
    /// The status file (`--status-file`).
    pub status_file: PathBuf,
    /// The agent's bpffs root (`--bpffs-root`).
    pub bpffs_root: PathBuf,
    /// The agent's stdout and stderr.
    pub log: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    pods: u32,
    metrics_address: Option<SocketAddr>,
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent {
    /// Creates the directories, an empty Route file and an empty Services file; the agent is
    /// not started yet ([`start`](Self::start)).
    pub fn new() -> Self {
        let tmp = std::env::temp_dir();
        remove_stale(&tmp);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{TMP_PREFIX}{}-{n}", std::process::id());
        let dir = tmp.join(&tag);
        let _ = fs::remove_dir_all(&dir);
        // Each input in a directory of its own: the agent watches a file's directory, and the
        // status file it writes must not wake it up.
        for sub in ["routes", "services", "cni", "run"] {
            fs::create_dir_all(dir.join(sub)).expect("create the agent's directories");
        }
        let a = Self {
            routes: dir.join("routes/routes.yaml"),
            services: dir.join("services/services.yaml"),
            cni_dir: dir.join("cni"),
            status_file: dir.join("run/status.json"),
            log: dir.join("agent.log"),
            bpffs_root: PathBuf::from(format!("{BPFFS_PREFIX}{}-{n}", std::process::id())),
            dir,
            bin: veer_bin(),
            child: None,
            pods: 0,
            metrics_address: None,
        };
        a.write_routes("[]\n");
        a.write_services("apiVersion: v1\nkind: List\nitems: []\n");
        a
    }

    /// Makes [`start`](Self::start) pass `--metrics-address <addr>` (otherwise the agent's
    /// default address is used).
    pub fn with_metrics_address(mut self, addr: SocketAddr) -> Self {
        self.metrics_address = Some(addr);
        self
    }

    /// Replaces `path` atomically (write a hidden file, rename), as an editor or a ConfigMap
    /// update does.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
    }

    /// Replaces the Route file.
    pub fn write_routes(&self, text: &str) {
        Self::replace(&self.routes, text);
    }

    /// Replaces the Services file.
    pub fn write_services(&self, text: &str) {
        Self::replace(&self.services, text);
    }

    /// Adds a CNI cache file for the pod whose namespace is at `netns`.
    pub fn add_pod(&mut self, namespace: &str, name: &str, netns: &Path) -> PodEntry {
        self.pods += 1;
        let n = self.pods;
        let container_id = format!("{:08x}{:08x}{:048x}", std::process::id(), n, 0xe2e);
        let uid = format!(
            "00000000-0000-4000-8000-{:04x}{:08x}",
            n,
            std::process::id()
        );
        let file = self.cni_dir.join(format!("cni-loopback-{container_id}-lo"));
        Self::replace(
            &file,
            &cni_loopback(&container_id, namespace, name, &uid, netns),
        );
        PodEntry {
            container_id,
            namespace: namespace.into(),
            name: name.into(),
            uid,
            netns: netns.into(),
            file,
        }
    }

    /// Adds a CNI cache file for a topology pod (`default/pod-<index>`).
    pub fn add_topology_pod(&mut self, pod: &Pod) -> PodEntry {
        self.add_pod("default", &format!("pod-{}", pod.index), &pod.path())
    }

    /// Removes a pod's CNI cache file (what CNI DEL does).
    pub fn remove_pod_file(&self, pod: &PodEntry) {
        let _ = fs::remove_file(&pod.file);
    }

    /// Starts `veer run` (the previous status file is removed first, so waits see only the new
    /// process's rounds).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        let _ = fs::remove_file(&self.status_file);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let _ = writeln!(log, "==== starting {}", self.bin.display());
        let err = log.try_clone().expect("agent log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--bpffs-root")
            .arg(&self.bpffs_root)
            .arg("run")
            .arg("--routes")
            .arg(&self.routes)
            .arg("--services")
            .arg(&self.services)
            .arg("--cni-dir")
            .arg(&self.cni_dir)
            .arg("--netns-dir")
            .arg("/var/run/netns")
            .arg("--status-file")
            .arg(&self.status_file)
            .args(["--resync-secs", "1"]);
        if let Some(addr) = self.metrics_address {
            cmd.arg("--metrics-address").arg(addr.to_string());
        }
        cmd.env("RUST_LOG", "info,veer_ebpf=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The agent dies with the test (even a killed one), never outlives it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` of the agent, waiting until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the agent process is still running (false once it exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last status the agent wrote, if any.
    pub fn status(&self) -> Option<Json> {
        let text = fs::read_to_string(&self.status_file).ok()?;
        Json::parse(&text).ok()
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn last_lines(&self, n: usize) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the status satisfies `pred` (the agent must keep running), returning it.
    pub fn wait_status(&mut self, what: &str, pred: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        loop {
            let st = self.status();
            if let Some(s) = st.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            if !self.running() || Instant::now() >= deadline {
                panic!(
                    "agent: {what}: not reached (running: {}); last status: {st:?}\nagent log:\n{}",
                    self.running(),
                    self.last_lines(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The round number of the last status (0 before the first).
    pub fn round(&self) -> u64 {
        self.status()
            .and_then(|s| s.get("round").as_u64())
            .unwrap_or(0)
    }

    /// Waits until `n` more rounds have completed: with `n = 2`, at least one whole round
    /// started after the call (so it saw every file written before it).
    pub fn wait_rounds(&mut self, n: u64) -> Json {
        let r = self.round();
        self.wait_status(&format!("{n} more rounds after round {r}"), |s| {
            s.get("round").as_u64().unwrap_or(0) >= r + n
        })
    }

    /// The status entry of the pod whose namespace is at `netns`.
    pub fn pod_status<'a>(status: &'a Json, netns: &Path) -> Option<&'a Json> {
        let want = netns.to_string_lossy();
        status
            .get("pods")
            .items()
            .iter()
            .find(|p| p.get("netns").as_str() == Some(want.as_ref()))
    }

    /// Names of the interfaces the agent manages in a pod's status entry.
    pub fn managed_ifaces(pod: &Json) -> Vec<String> {
        pod.get("interfaces")
            .items()
            .iter()
            .filter_map(|i| i.get("name").as_str().map(String::from))
            .collect()
    }

    /// Waits until the agent manages the pod at `netns` with (at least) `ifaces`.
    pub fn wait_pod_managed(&mut self, netns: &Path, ifaces: &[&str]) -> Json {
        self.wait_status(
            &format!("pod {} managed with {ifaces:?}", netns.display()),
            |s| {
                Self::pod_status(s, netns).is_some_and(|p| {
                    let have = Self::managed_ifaces(p);
                    ifaces.iter().all(|i| have.iter().any(|h| h == i))
                })
            },
        )
    }

    /// Waits until the agent no longer lists the pod at `netns`.
    pub fn wait_pod_gone(&mut self, netns: &Path) -> Json {
        self.wait_status(&format!("pod {} gone", netns.display()), |s| {
            s.get("round").as_u64().is_some() && Self::pod_status(s, netns).is_none()
        })
    }

    /// The load errors of the last status.
    pub fn load_errors(status: &Json) -> Vec<String> {
        status
            .get("load_errors")
            .items()
            .iter()
            .filter_map(|e| e.as_str().map(String::from))
            .collect()
    }

    /// The node-wide slot of each interface name, from a status.
    pub fn slots(status: &Json) -> BTreeMap<String, u16> {
        status
            .get("slots")
            .items()
            .iter()
            .filter_map(|p| {
                Some((
                    p.get("dev").as_str()?.to_string(),
                    u16::try_from(p.get("slot").as_u64()?).ok()?,
                ))
            })
            .collect()
    }

    /// The agent's pinned maps.
    pub fn maps(&self) -> Maps {
        Maps::open_pinned(&self.bpffs_root)
            .unwrap_or_else(|e| panic!("opening the maps under {}: {e}", self.bpffs_root.display()))
    }

    /// The link pin directories (`<root>/links/<netns cookie>`).
    pub fn link_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.bpffs_root.join(paths::LINKS_DIR))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Ids of the links pinned under the root.
    pub fn pinned_link_ids(&self) -> BTreeSet<u64> {
        self.pinned_links().into_keys().collect()
    }

    /// The links pinned under the root as (link id, program id) (`bpftool link show pinned`).
    pub fn pinned_links(&self) -> BTreeMap<u64, u64> {
        let mut ids = BTreeMap::new();
        for d in self.link_dirs() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let out = crate::programs::command("bpftool")
                    .args(["-j", "link", "show", "pinned"])
                    .arg(e.path())
                    .output()
                    .expect("run bpftool");
                if let Ok(j) = Json::parse(String::from_utf8_lossy(&out.stdout).trim())
                    && let Some(id) = j.get("id").as_u64()
                {
                    ids.insert(id, j.get("prog_id").as_u64().unwrap_or(0));
                }
            }
        }
        ids
    }

    /// Stops the agent and removes its pins and directories (what drop does).
    fn cleanup(&mut self) {
        self.kill9();
        if self.bpffs_root.exists() {
            let out = Command::new(&self.bin)
                .arg("--bpffs-root")
                .arg(&self.bpffs_root)
                .arg("cleanup")
                .output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("veer cleanup of {}: {out:?}", self.bpffs_root.display());
            }
            let _ = fs::remove_dir_all(&self.bpffs_root);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- veer agent log ({}):\n{}\n----",
                self.log.display(),
                self.last_lines(60)
            );
        }
        self.cleanup();
    }
}
