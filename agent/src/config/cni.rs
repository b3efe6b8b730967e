//! Pods on this node, from the CNI result cache (`/var/lib/cni/results`).
//!
//! kubelet adds `lo` to every pod sandbox through the loopback plugin, and libcni caches each
//! ADD result as `<network>-<container id>-<ifname>` (`kind: cniCacheV1`), so every pod with
//! its own network namespace has a `cni-loopback-<container id>-lo` file. It names the pod
//! (`cniArgs`: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`) and its network namespace
//! (`result.interfaces[].sandbox`). hostNetwork pods get no CNI call, so they have no such
//! file: scanning these files is how they are excluded. The file goes away on CNI DEL; a
//! leftover file of a removed sandbox names a netns path that no longer exists, which the
//! caller notices when it opens the path.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where libcni keeps its cache.
pub const RESULTS_DIR: &str = "/var/lib/cni/results";

/// One pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodSandbox {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox (infra) container id.
    pub container_id: String,
    /// Path of the pod's network namespace, e.g. `/var/run/netns/cni-…`.
    pub netns: PathBuf,
    /// The cache file it was read from.
    pub file: PathBuf,
}

/// Why a cache file was not understood.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a CNI cache file: {source}", file.display())]
    Json {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: kind {kind:?} is not \"cniCacheV1\"", file.display())]
    Kind { file: PathBuf, kind: String },
    #[error("{}: cniArgs has no {arg}", file.display())]
    MissingArg { file: PathBuf, arg: &'static str },
    #[error("{}: containerId is missing", file.display())]
    MissingContainerId { file: PathBuf },
    #[error("{}: no result.interfaces[] entry has a sandbox", file.display())]
    NoSandbox { file: PathBuf },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheFile {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    container_id: String,
    #[serde(default)]
    cni_args: Option<Vec<(String, String)>>,
    #[serde(default)]
    result: Option<CacheResult>,
}

#[derive(Deserialize)]
struct CacheResult {
    #[serde(default)]
    interfaces: Option<Vec<CacheInterface>>,
}

#[derive(Deserialize)]
struct CacheInterface {
    #[serde(default)]
    sandbox: Option<String>,
}

/// Parses one cache file's content; `file` is used in errors and kept in the result.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<PodSandbox, CniError> {
    let c: CacheFile = serde_json::from_slice(bytes).map_err(|source| CniError::Json {
        file: file.to_path_buf(),
        source,
    })?;
    if c.kind != "cniCacheV1" {
        return Err(CniError::Kind {
            file: file.to_path_buf(),
            kind: c.kind,
        });
    }
    let args = c.cni_args.unwrap_or_default();
    let arg = |arg: &'static str| {
        args.iter()
            .find(|(k, v)| k == arg && !v.is_empty())
            .map(|(_, v)| v.clone())
            .ok_or_else(|| CniError::MissingArg {
                file: file.to_path_buf(),
                arg,
            })
    };
    let namespace = arg("K8S_POD_NAMESPACE")?;
    let name = arg("K8S_POD_NAME")?;
    let uid = arg("K8S_POD_UID")?;
    if c.container_id.is_empty() {
        return Err(CniError::MissingContainerId {
            file: file.to_path_buf(),
        });
    }
    let netns = c
        .result
        .and_then(|r| r.interfaces)
        .unwrap_or_default()
        .into_iter()
        .find_map(|i| i.sandbox.filter(|s| !s.is_empty()))
        .ok_or_else(|| CniError::NoSandbox {
            file: file.to_path_buf(),
        })?;
    Ok(PodSandbox {
        namespace,
        name,
        uid,
        container_id: c.container_id,
        netns: PathBuf::from(netns),
        file: file.to_path_buf(),
    })
}

/// Reads every file of `dir` whose name ends with `-lo`, sorted by name. Bad files are
/// reported and skipped; a missing or unreadable `dir` is one error.
pub fn scan_dir(dir: &Path) -> (Vec<PodSandbox>, Vec<CniError>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    let io = |file: &Path, source| CniError::Io {
        file: file.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Err(e) => return (pods, vec![io(dir, e)]),
        Ok(rd) => {
            for entry in rd {
                match entry {
                    Ok(e) if e.file_name().to_string_lossy().ends_with("-lo") => {
                        files.push(e.path())
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(io(dir, e)),
                }
            }
        }
    }
    files.sort();
    for f in files {
        match std::fs::read(&f) {
            Ok(bytes) => match parse(&f, &bytes) {
                Ok(p) => pods.push(p),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(io(&f, e)),
        }
    }
    (pods, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(Path::new("x-lo"), json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn missing_identity_or_sandbox_is_an_error_naming_the_file() {
        assert_eq!(
            err(r#"{"kind":"other"}"#),
            r#"x-lo: kind "other" is not "cniCacheV1""#
        );
        assert_eq!(
            err(r#"{"kind":"cniCacheV1","cniArgs":[["K8S_POD_NAMESPACE","a"]]}"#),
            "x-lo: cniArgs has no K8S_POD_NAME"
        );
        let no_sandbox = r#"{"kind":"cniCacheV1","containerId":"c","cniArgs":[["K8S_POD_NAMESPACE","a"],["K8S_POD_NAME","b"],["K8S_POD_UID","u"]],
            "result":{"interfaces":[{"name":"lo"}]}}"#;
        assert_eq!(
            err(no_sandbox),
            "x-lo: no result.interfaces[] entry has a sandbox"
        );
        assert!(err("{").starts_with("x-lo: not a CNI cache file: "));
    }
}
