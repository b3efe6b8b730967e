//! A real Kubernetes API server for the tests: `etcd` and `kube-apiserver` (built by
//! `cargo xtask setup` from the pinned Go module `tests/go/`, declared in `xtask/src/programs.rs`)
//! started on loopback only, on free ports, with their data, keys and logs in a temporary
//! directory of their own; both are killed and the directory removed when the [`ApiServer`] is
//! dropped (also when a test panics; and the daemons get `SIGKILL` if the test process dies).
//!
//! Authentication: a static admin token (group `system:masters`) from `--token-auth-file`, and
//! ServiceAccount tokens signed by a P-256 key the harness generates (TokenRequest API).
//! Authorization `Node,RBAC`, the default admission plugins. The serving certificate is the one
//! kube-apiserver generates for itself in `--cert-dir` (a self-signed CA and a certificate for
//! 127.0.0.1); clients trust exactly that CA.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use ring::{
    rand::{SecureRandom, SystemRandom},
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};

use crate::programs::command;

/// How long etcd and kube-apiserver get to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The ServiceAccount token issuer (and default audience).
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// One daemon; killed (and reaped) on drop.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, args: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create the daemon log");
        let err = out.try_clone().expect("clone the log handle");
        let mut cmd = command(name);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The daemon dies with the test process even if that is killed outright.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { name, child, log }
    }

    /// Panics (with the end of the log) if the daemon has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status} before it was ready; its log ends:\n{}",
                self.name,
                log_tail(&self.log)
            );
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 40 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A free TCP port on 127.0.0.1 (bound and released: the daemon binds it next).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Random bytes as hex.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).expect("random bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A new P-256 key pair: (PKCS#8 private key PEM, SubjectPublicKeyInfo PEM).
fn service_account_key() -> (String, String) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("generate the ServiceAccount signing key");
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (uncompressed point) }
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    (pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki))
}

/// `GET path` over plain HTTP/1.0 (etcd's client URL); the status line and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// etcd and kube-apiserver on loopback. Field order is drop order: the API server, then etcd,
/// then the directory.
pub struct ApiServer {
    apiserver: Daemon,
    etcd: Daemon,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA kube-apiserver's serving certificate chains to (PEM).
    ca_pem: String,
    admin_token: String,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok`.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("veer-apiserver-")
            .tempdir()
            .expect("temporary directory");
        let d = dir.path();
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Daemon::spawn(
            "etcd",
            &[
                "--name=veer-test".into(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=veer-test={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            d,
        );
        let etcd_addr: SocketAddr = ([127, 0, 0, 1], etcd_port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            etcd.assert_running();
            if http_get(etcd_addr, "/health").is_some_and(|r| r.contains("\"health\":\"true\"")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {START_TIMEOUT:?}; its log ends:\n{}",
                log_tail(&etcd.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let admin_token = random_hex(24);
        fs::write(
            d.join("tokens.csv"),
            format!("{admin_token},veer-admin,veer-admin-uid,\"system:masters\"\n"),
        )
        .unwrap();
        let (sa_key, sa_pub) = service_account_key();
        fs::write(d.join("sa.key"), sa_key).unwrap();
        fs::write(d.join("sa.pub"), sa_pub).unwrap();
        // Every request's metadata (who, verb, resource, response code): the tests read it.
        fs::write(
            d.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  \
             - level: Metadata\n",
        )
        .unwrap();
        let certs = d.join("certs");
        let mut apiserver = Daemon::spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", certs.display()),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                format!("--service-account-issuer={SA_ISSUER}"),
                format!("--service-account-key-file={}", d.join("sa.pub").display()),
                format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=Node,RBAC".into(),
                // No kubernetes Service endpoints: a loopback address is not a valid endpoint.
                "--endpoint-reconciler-type=none".into(),
                "--profiling=false".into(),
                format!(
                    "--audit-policy-file={}",
                    d.join("audit-policy.yaml").display()
                ),
                format!("--audit-log-path={}", d.join("audit.log").display()),
                "--audit-log-mode=blocking".into(),
            ],
            d,
        );
        let url = format!("https://127.0.0.1:{api_port}");
        let cert_file = certs.join("apiserver.crt");
        let ca_pem = loop {
            apiserver.assert_running();
            if let Some(ca) = fs::read_to_string(&cert_file)
                .ok()
                .and_then(|chain| ca_of_chain(&chain))
            {
                break ca;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver wrote no serving certificate within {START_TIMEOUT:?}; its log \
                 ends:\n{}",
                log_tail(&apiserver.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let me = Self {
            apiserver,
            etcd,
            url,
            ca_pem,
            admin_token,
            dir,
        };
        me.wait_ready(deadline).await;
        me
    }

    async fn wait_ready(&self, deadline: Instant) {
        let admin = self.admin().await;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            let last = match admin.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "kube-apiserver not ready within {START_TIMEOUT:?} (last answer: {last}); its \
                     log ends:\n{}",
                    log_tail(&self.apiserver.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The process ids of etcd and kube-apiserver.
    pub fn pids(&self) -> [(&'static str, u32); 2] {
        [
            (self.etcd.name, self.etcd.pid()),
            (self.apiserver.name, self.apiserver.pid()),
        ]
    }

    /// The directory holding the data, keys and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The audit events so far (level `Metadata`, stages `ResponseStarted`/`ResponseComplete`),
    /// as JSON objects.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The end of kube-apiserver's log (for failure messages).
    pub fn apiserver_log(&self) -> String {
        log_tail(&self.apiserver.log)
    }

    /// A kubeconfig for this server authenticated by `token` (also written as
    /// `<dir>/<name>.kubeconfig`, for `kubectl --kubeconfig` while debugging).
    pub fn kubeconfig(&self, name: &str, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: veer-test\n  cluster:\n    \
             server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  \
             user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: \
             veer-test\n    user: {name}\ncurrent-context: {name}\n",
            url = self.url
        );
        let _ = fs::write(self.dir.path().join(format!("{name}.kubeconfig")), &text);
        text
    }

    /// A client authenticated by `token`, trusting only this server's CA.
    pub async fn client_with_token(&self, name: &str, token: &str) -> Client {
        let kc = Kubeconfig::from_yaml(&self.kubeconfig(name, token)).expect("kubeconfig");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("client config from the kubeconfig");
        Client::try_from(cfg).expect("client")
    }

    /// A cluster-admin client (`system:masters`).
    pub async fn admin(&self) -> Client {
        self.client_with_token("admin", &self.admin_token).await
    }
}

/// Whether the Go-built daemons are present. Outside CI their absence skips the calling test
/// loudly; under `CI=true` it fails it (setup builds them, so a layer cannot pass by not running).
pub fn require_daemons(test: &str) -> bool {
    let missing: Vec<&str> = ["etcd", "kube-apiserver"]
        .into_iter()
        .filter(|p| !crate::programs::installed(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test} needs {} (built by `cargo xtask setup` into target/go-bin/)",
        missing.join(" and ")
    );
    if crate::privileged::in_ci() {
        panic!("{why}, and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// The last certificate of a PEM chain (kube-apiserver's self-signed serving file holds the
/// serving certificate, then the CA that signed it), once the file is complete.
fn ca_of_chain(chain: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let certs: Vec<&str> = chain
        .split_inclusive(END)
        .filter(|c| c.contains(END))
        .collect();
    match certs[..] {
        [_, .., ca] => Some(format!("{}\n", ca.trim())),
        _ => None,
    }
}

/// The TCP sockets process `pid` listens on (from `/proc/net/tcp{,6}` and its fds).
pub fn listening_sockets(pid: u32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        for line in fs::read_to_string(file).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); st 0A = LISTEN
            if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
                continue;
            }
            if let Some(a) = parse_proc_addr(f[1], v6) {
                out.push(a);
            }
        }
    }
    out
}

/// `0100007F:1F90` (IPv4, host byte order words) or the 32-hex-digit IPv6 form.
fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let ip: std::net::IpAddr = if v6 {
        <[u8; 16]>::try_from(bytes).ok()?.into()
    } else {
        <[u8; 4]>::try_from(bytes).ok()?.into()
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90", false),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050", true),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000:0016", false),
            Some("0.0.0.0:22".parse().unwrap())
        );
    }

    #[test]
    fn the_ca_is_the_last_certificate_of_a_complete_chain() {
        let c = |n| format!("-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----\n");
        assert_eq!(ca_of_chain(&c("a")), None, "one certificate: still writing");
        assert_eq!(ca_of_chain(&format!("{}{}", c("a"), c("b"))), Some(c("b")));
    }
}
