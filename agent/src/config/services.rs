//! Services and their addresses, from files in the `kubectl get svc -A -o yaml` form.
//!
//! A file holds `v1/Service` and `discovery.k8s.io/v1/EndpointSlice` objects, as single
//! documents, top-level arrays or `kind: List` documents (JSON or YAML, as in [`super::load`]).
//! Objects of other kinds are skipped with a warning; a document without a kind is an error.
//! A missing `metadata.namespace` means `default`, as for `kubectl apply`.
//!
//! Addresses of a Service ([`ServiceIndex::resolve`]):
//! - `spec.clusterIPs` (dual-stack), or `spec.clusterIP` when `clusterIPs` is absent;
//! - `clusterIP: None` (headless): the endpoint addresses of the EndpointSlices labelled
//!   `kubernetes.io/service-name: <name>` in its namespace — ready endpoints only (a missing
//!   `conditions.ready` counts as ready, as Kubernetes says), or all of them when none is ready;
//! - an unknown Service, an ExternalName Service, a Service without cluster IP or a headless
//!   Service without endpoints resolves to an [`Unresolved`] value, to report, never fatal.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::load::{self, DocRef, LoadError, LoadWarning};
use super::route::{NamespacedName, Problem};

/// Label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The part of `metadata` used here.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct ObjectMeta {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub namespace: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// A `v1/Service`, reduced to what routing needs.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct ServiceObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub spec: ServiceSpec,
}

/// `Service.spec`, reduced.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP", default)]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default, deserialize_with = "null_default")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub external_name: Option<String>,
}

/// A `discovery.k8s.io/v1/EndpointSlice`, reduced.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub address_type: String,
    #[serde(default, deserialize_with = "null_default")]
    pub endpoints: Vec<EndpointObject>,
}

/// One `endpoints[]` entry.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct EndpointObject {
    #[serde(default, deserialize_with = "null_default")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: EndpointConditions,
}

/// `endpoints[].conditions`, reduced.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
}

/// A Service as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: NamespacedName,
    /// Cluster IPs, primary first; empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.externalName` of an ExternalName Service.
    pub external_name: Option<String>,
}

/// An EndpointSlice as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// The slice's own namespace and name.
    pub id: NamespacedName,
    /// The Service it belongs to (from [`SERVICE_NAME_LABEL`]).
    pub service: String,
    /// (address, ready) per endpoint address; `ready` is `conditions.ready` or true if unset.
    pub addresses: Vec<(IpAddr, bool)>,
}

/// Why a Service gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("Service {0} not found")]
    NotFound(NamespacedName),
    #[error("headless Service {0} has no endpoints")]
    NoEndpoints(NamespacedName),
    #[error("Service {service} is an ExternalName Service ({external_name}); it has no IP")]
    ExternalName {
        service: NamespacedName,
        external_name: String,
    },
    #[error("Service {0} has no cluster IP")]
    NoClusterIp(NamespacedName),
}

/// Anything that can give a Service's addresses (files now, a Kubernetes watch later).
pub trait ServiceLookup {
    fn resolve(&self, namespace: &str, name: &str) -> Result<Vec<IpAddr>, Unresolved>;
}

/// The objects of one Services file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    pub file: PathBuf,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub warnings: Vec<LoadWarning>,
}

/// Loads a Services file from its text. Any error rejects the whole file.
pub fn load_str(file: &Path, text: &str) -> Result<ServiceObjects, Vec<LoadError>> {
    let docs = load::read_documents(file, text).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut out = ServiceObjects {
        file: file.to_path_buf(),
        ..Default::default()
    };
    for item in load::items(file, &docs, &mut errors) {
        let Some(obj) = load::as_object(item.value, &item.at, "", &mut errors) else {
            continue;
        };
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        let kind = obj.get("kind").and_then(Value::as_str);
        match (api_version, kind) {
            (Some("v1"), Some("Service")) => {
                if let Some(s) = service(&item.at, item.value, &mut errors) {
                    out.services.push(s);
                }
            }
            (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
                if let Some(s) = slice(&item.at, item.value, &mut errors, &mut out.warnings) {
                    out.slices.push(s);
                }
            }
            (_, Some(kind)) => out.warnings.push(LoadWarning {
                at: item.at.clone(),
                path: String::new(),
                message: format!(
                    "{kind} ({}) ignored",
                    api_version.unwrap_or("no apiVersion")
                ),
            }),
            (_, None) => errors.push(LoadError::WrongKind {
                at: item.at.clone(),
                api_version: api_version.map(String::from),
                kind: None,
                expected: "a Service (v1) or an EndpointSlice (discovery.k8s.io/v1)",
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Loads one Services file.
pub fn load_file(path: &Path) -> Result<ServiceObjects, Vec<LoadError>> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        vec![LoadError::Io {
            file: path.to_path_buf(),
            source,
        }]
    })?;
    load_str(path, &text)
}

fn parse_meta<T: serde::de::DeserializeOwned>(
    at: &DocRef,
    v: &Value,
    kind: &str,
    errors: &mut Vec<LoadError>,
) -> Option<(T, DocRef)> {
    let t = serde_json::from_value::<T>(v.clone())
        .map_err(|e| {
            errors.push(LoadError::Shape {
                at: at.clone(),
                path: String::new(),
                message: e.to_string(),
            })
        })
        .ok()?;
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        errors.push(LoadError::Shape {
            at: at.clone(),
            path: "metadata.name".into(),
            message: "required field is missing".into(),
        });
        return None;
    }
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let at = DocRef {
        object: Some((kind.to_string(), format!("{ns}/{name}"))),
        ..at.clone()
    };
    Some((t, at))
}

fn id(meta: &ObjectMeta) -> NamespacedName {
    NamespacedName {
        namespace: if meta.namespace.is_empty() {
            "default".into()
        } else {
            meta.namespace.clone()
        },
        name: meta.name.clone(),
    }
}

fn parse_ip(at: &DocRef, path: String, s: &str, errors: &mut Vec<LoadError>) -> Option<IpAddr> {
    s.parse()
        .map_err(|_| {
            errors.push(LoadError::Invalid {
                at: at.clone(),
                path,
                value: s.to_string(),
                problem: Problem::NotIp,
            })
        })
        .ok()
}

fn service(at: &DocRef, v: &Value, errors: &mut Vec<LoadError>) -> Option<Service> {
    let (obj, at): (ServiceObject, _) = parse_meta(at, v, "Service", errors)?;
    let spec = &obj.spec;
    let (field, raw): (&str, Vec<&str>) = if spec.cluster_ips.is_empty() {
        (
            "spec.clusterIP",
            spec.cluster_ip.iter().map(String::as_str).collect(),
        )
    } else {
        (
            "spec.clusterIPs",
            spec.cluster_ips.iter().map(String::as_str).collect(),
        )
    };
    let headless = raw.contains(&"None");
    let before = errors.len();
    let mut cluster_ips = Vec::new();
    if !headless {
        for (i, s) in raw.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            let path = if field == "spec.clusterIPs" {
                format!("{field}[{i}]")
            } else {
                field.to_string()
            };
            if let Some(ip) = parse_ip(&at, path, s, errors)
                && !cluster_ips.contains(&ip)
            {
                cluster_ips.push(ip);
            }
        }
    }
    (errors.len() == before).then(|| Service {
        id: id(&obj.metadata),
        cluster_ips,
        headless,
        external_name: spec
            .external_name
            .clone()
            .filter(|_| spec.type_.as_deref() == Some("ExternalName")),
    })
}

fn slice(
    at: &DocRef,
    v: &Value,
    errors: &mut Vec<LoadError>,
    warnings: &mut Vec<LoadWarning>,
) -> Option<EndpointSlice> {
    let (obj, at): (EndpointSliceObject, _) = parse_meta(at, v, "EndpointSlice", errors)?;
    let Some(service) = obj.metadata.labels.get(SERVICE_NAME_LABEL) else {
        warnings.push(LoadWarning {
            at,
            path: format!("metadata.labels.{SERVICE_NAME_LABEL}"),
            message: "missing; the slice belongs to no Service and is ignored".into(),
        });
        return None;
    };
    if obj.address_type == "FQDN" {
        warnings.push(LoadWarning {
            at,
            path: "addressType".into(),
            message: "FQDN slices have no IP addresses; ignored".into(),
        });
        return None;
    }
    let before = errors.len();
    let mut addresses = Vec::new();
    for (i, e) in obj.endpoints.iter().enumerate() {
        let ready = e.conditions.ready.unwrap_or(true);
        for (j, a) in e.addresses.iter().enumerate() {
            if let Some(ip) = parse_ip(&at, format!("endpoints[{i}].addresses[{j}]"), a, errors) {
                addresses.push((ip, ready));
            }
        }
    }
    (errors.len() == before).then(|| EndpointSlice {
        id: id(&obj.metadata),
        service: service.clone(),
        addresses,
    })
}

/// Services and EndpointSlices by name. Later inserts replace earlier objects of the same
/// namespace and name.
#[derive(Debug, Clone, Default)]
pub struct ServiceIndex {
    services: BTreeMap<NamespacedName, Service>,
    /// (namespace, Service name) → slice name → slice.
    slices: BTreeMap<NamespacedName, BTreeMap<String, EndpointSlice>>,
}

impl ServiceIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of the objects of several files, inserted in order.
    pub fn from_objects<'a>(files: impl IntoIterator<Item = &'a ServiceObjects>) -> Self {
        let mut idx = Self::new();
        for f in files {
            idx.insert(f);
        }
        idx
    }

    /// Adds the objects of one file.
    pub fn insert(&mut self, objects: &ServiceObjects) {
        for s in &objects.services {
            self.insert_service(s.clone());
        }
        for s in &objects.slices {
            self.insert_slice(s.clone());
        }
    }

    pub fn insert_service(&mut self, s: Service) {
        self.services.insert(s.id.clone(), s);
    }

    pub fn insert_slice(&mut self, s: EndpointSlice) {
        let key = NamespacedName {
            namespace: s.id.namespace.clone(),
            name: s.service.clone(),
        };
        self.slices
            .entry(key)
            .or_default()
            .insert(s.id.name.clone(), s);
    }

    /// Number of Services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The addresses of Service `namespace/name` (see the module docs). Headless endpoint
    /// addresses come sorted; cluster IPs in the Service's order.
    pub fn resolve(&self, namespace: &str, name: &str) -> Result<Vec<IpAddr>, Unresolved> {
        let key = NamespacedName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let Some(svc) = self.services.get(&key) else {
            return Err(Unresolved::NotFound(key));
        };
        if svc.headless {
            let all: Vec<(IpAddr, bool)> = self
                .slices
                .get(&key)
                .into_iter()
                .flat_map(|m| m.values())
                .flat_map(|s| s.addresses.iter().copied())
                .collect();
            let any_ready = all.iter().any(|(_, r)| *r);
            let mut ips: Vec<IpAddr> = all
                .into_iter()
                .filter(|(_, r)| *r || !any_ready)
                .map(|(ip, _)| ip)
                .collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                return Err(Unresolved::NoEndpoints(key));
            }
            return Ok(ips);
        }
        if !svc.cluster_ips.is_empty() {
            return Ok(svc.cluster_ips.clone());
        }
        Err(match &svc.external_name {
            Some(external_name) => Unresolved::ExternalName {
                service: key,
                external_name: external_name.clone(),
            },
            None => Unresolved::NoClusterIp(key),
        })
    }
}

impl ServiceLookup for ServiceIndex {
    fn resolve(&self, namespace: &str, name: &str) -> Result<Vec<IpAddr>, Unresolved> {
        ServiceIndex::resolve(self, namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVCS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: nginx, namespace: default}
  spec: {clusterIP: 10.86.69.17, clusterIPs: [10.86.69.17, "fd00:86::17"], type: ClusterIP}
- apiVersion: v1
  kind: Service
  metadata: {name: old, namespace: default}
  spec: {clusterIP: 10.86.1.1}
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: kube-system}
  spec: {clusterIP: None, clusterIPs: [None]}
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: kube-system}
  spec: {clusterIP: None}
- apiVersion: v1
  kind: Service
  metadata: {name: ext, namespace: default}
  spec: {type: ExternalName, externalName: example.com}
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: kube-system
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.124.0.9]
  conditions: {ready: true}
- addresses: [10.124.0.5]
- addresses: [10.124.0.7]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: empty-x
  namespace: kube-system
  labels: {kubernetes.io/service-name: empty}
addressType: IPv4
endpoints: null
"#;

    fn index() -> ServiceIndex {
        let objs = load_str(Path::new("svc.yaml"), SVCS).unwrap();
        assert_eq!(
            objs.warnings[0].to_string(),
            "svc.yaml: document 1 items[5]: Pod (v1) ignored"
        );
        ServiceIndex::from_objects([&objs])
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn dual_stack_cluster_ips_come_from_cluster_ips() {
        assert_eq!(
            index().resolve("default", "nginx"),
            Ok(ips(&["10.86.69.17", "fd00:86::17"]))
        );
        assert_eq!(index().resolve("default", "old"), Ok(ips(&["10.86.1.1"])));
    }

    #[test]
    fn headless_services_resolve_to_ready_endpoints() {
        assert_eq!(
            index().resolve("kube-system", "db"),
            Ok(ips(&["10.124.0.5", "10.124.0.9"]))
        );
    }

    #[test]
    fn headless_services_without_ready_endpoints_use_all_endpoints() {
        let mut idx = index();
        idx.insert_slice(EndpointSlice {
            id: NamespacedName {
                namespace: "kube-system".into(),
                name: "db-abc".into(),
            },
            service: "db".into(),
            addresses: vec![("10.0.0.2".parse().unwrap(), false)],
        });
        assert_eq!(idx.resolve("kube-system", "db"), Ok(ips(&["10.0.0.2"])));
    }

    #[test]
    fn unresolvable_services_are_reported_not_fatal() {
        let idx = index();
        let msg = |ns, n| idx.resolve(ns, n).unwrap_err().to_string();
        assert_eq!(msg("default", "nope"), "Service default/nope not found");
        assert_eq!(
            msg("kube-system", "empty"),
            "headless Service kube-system/empty has no endpoints"
        );
        assert_eq!(
            msg("default", "ext"),
            "Service default/ext is an ExternalName Service (example.com); it has no IP"
        );
    }

    #[test]
    fn bad_addresses_reject_the_file_with_their_path() {
        let text = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},
            "spec":{"clusterIPs":["10.0.0.1","10.0.0.x"]}}"#;
        let e: Vec<String> = load_str(Path::new("s.json"), text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            [
                r#"s.json: document 1 (Service "default/a"): spec.clusterIPs[1]: "10.0.0.x" is not an IP address"#
            ]
        );
    }
}
