//! Loading Route files.
//!
//! A file is JSON or YAML, told apart by its content, not its name: text starting with `{` or
//! `[` is read as a stream of JSON values, anything else (or such text that is not JSON, like
//! flow-style YAML) as a stream of YAML documents. YAML is converted to JSON values first, as
//! kubectl does, so a plain `10` is a number (quote strings that look like numbers); but only
//! the YAML 1.2 spellings `true`/`false` are booleans, so `n`, `no`, `on` or `yes` stay strings
//! (kubectl's YAML 1.1 would turn `namespaces: [no]` into a boolean). Empty and null documents
//! are skipped and do not count: "document 2" in a message is the second non-empty document
//! (1-based).
//!
//! Each document (or each element of a top-level array, or each `items[]` entry of a `kind:
//! List`/`RouteList` document) is one of:
//! - a Route object: `apiVersion: k8s.ovn.org/v1`, `kind: Route`, `metadata.name`, `spec`
//!   (see [`super::route`]);
//! - a shorthand entry: `{"svc": "namespace/name", "dev": "eth0"}` or
//!   `{"route": "172.16.0.0/16", "dev": "eth1"}`, each with an optional `via`.
//!
//! All shorthand entries of a file become one synthetic Route **named after the file** (its
//! file name with extension, e.g. `steering.json`), priority 0, rules in file order. Its
//! [`LoadedRoute::origin`] is the first shorthand document, and each rule's path says where it
//! was written (`document 1 [3]`).
//!
//! A file loads whole or not at all: any error rejects the file, and every error found in it
//! is returned (so one fix round is enough). Each error names the file, the document, the
//! array or `items[]` index, the object (`Route "demo"`) when known, the field path and the
//! bad value. [`load_dir`] loads each file separately, and [`RouteSet`] keeps the last good
//! version of a file that became bad.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::route::{
    self, CheckedRule, FieldError, NamespacedName, Problem, RouteRule, RouteSpec, SvcRule,
};

/// The syntax a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        })
    }
}

/// Where in a file an object is: `routes.yaml: document 2 items[0] (Route "demo")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    pub file: PathBuf,
    /// 1-based index among the file's non-empty documents.
    pub document: usize,
    /// Index inside the document: `items[3]` for a List, `[3]` for a top-level array, or empty.
    pub item: String,
    /// Kind and name of the object, when known.
    pub object: Option<(String, String)>,
}

impl DocRef {
    fn new(file: &Path, document: usize) -> Self {
        Self {
            file: file.to_path_buf(),
            document,
            item: String::new(),
            object: None,
        }
    }

    fn named(&self, kind: &str, name: &str) -> Self {
        Self {
            object: Some((kind.to_string(), name.to_string())),
            ..self.clone()
        }
    }

    /// `document 2 [3]`: the place inside the file, without the file.
    pub fn in_file(&self) -> String {
        if self.item.is_empty() {
            format!("document {}", self.document)
        } else {
            format!("document {} {}", self.document, self.item)
        }
    }
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.in_file())?;
        if let Some((kind, name)) = &self.object {
            write!(f, " ({kind} {name:?})")?;
        }
        Ok(())
    }
}

/// Where a loaded Route came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document index.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)
    }
}

fn quoted(s: &Option<String>) -> String {
    s.as_ref()
        .map_or_else(|| "(none)".into(), |s| format!("{s:?}"))
}

fn with_path(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

/// Why a file (or part of it) was rejected.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or directory could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not JSON or YAML.
    #[error("{}: not valid {format}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        format: Format,
        message: String,
    },
    /// A value has the wrong type or a required field is missing.
    #[error("{at}: {}", with_path(path, message))]
    Shape {
        at: DocRef,
        path: String,
        message: String,
    },
    /// An object of another kind where a Route (or Service) was expected.
    #[error(
        "{at}: apiVersion {}, kind {} is not {expected}",
        quoted(api_version),
        quoted(kind)
    )]
    WrongKind {
        at: DocRef,
        api_version: Option<String>,
        kind: Option<String>,
        expected: &'static str,
    },
    /// A field's value is not acceptable.
    #[error("{at}: {path}: {value:?} {problem}")]
    Invalid {
        at: DocRef,
        /// Path relative to the object: `spec.route[1].dst`, or `dev` in a shorthand entry.
        path: String,
        value: String,
        problem: Problem,
    },
    /// Two Routes of the same name in one file.
    #[error("{at}: a Route named {name:?} is already defined in document {first}")]
    DuplicateName {
        at: DocRef,
        name: String,
        first: usize,
    },
}

impl LoadError {
    fn invalid(at: &DocRef, e: FieldError) -> Self {
        LoadError::Invalid {
            at: at.clone(),
            path: e.path,
            value: e.value,
            problem: e.problem,
        }
    }

    fn shape(at: &DocRef, path: impl Into<String>, message: impl Into<String>) -> Self {
        LoadError::Shape {
            at: at.clone(),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A non-fatal remark (unknown field, unknown feature gate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    pub at: DocRef,
    pub path: String,
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, with_path(&self.path, &self.message))
    }
}

/// One Route read from a file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedRoute {
    /// `metadata.name`, or the file name for the synthetic Route of shorthand entries.
    pub name: String,
    /// The spec as written (synthesised for shorthand entries).
    pub spec: RouteSpec,
    pub origin: Origin,
    /// Whether this is the synthetic Route of a file's shorthand entries.
    pub shorthand: bool,
    /// The validated rules, `route[]` then `svc[]` (file order for shorthand).
    pub rules: Vec<CheckedRule>,
}

/// A successfully loaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFile {
    pub file: PathBuf,
    pub routes: Vec<LoadedRoute>,
    pub warnings: Vec<LoadWarning>,
}

/// The result of loading one file.
pub type FileResult = Result<RouteFile, Vec<LoadError>>;

/// Reads a file's documents as JSON values (see the module docs for the format rules).
// Errors are rare and carry their context by value; boxing them would only hurt matching.
#[allow(clippy::result_large_err)]
pub(crate) fn read_documents(file: &Path, text: &str) -> Result<Vec<Value>, LoadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let looks_json = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
    let mut json_error = None;
    if looks_json {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        match stream.collect::<Result<Vec<_>, _>>() {
            Ok(docs) => return Ok(docs.into_iter().filter(|d| !d.is_null()).collect()),
            Err(e) => json_error = Some(e.to_string()),
        }
    }
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_multiple_with_options::<Value>(text, options) {
        Ok(docs) => Ok(docs.into_iter().filter(|d| !d.is_null()).collect()),
        Err(e) => {
            let (format, message) = match json_error {
                Some(m) => (Format::Json, m),
                None => {
                    let m = e.without_snippet().to_string();
                    let m = m.strip_prefix("error: ").unwrap_or(&m).to_string();
                    (
                        Format::Yaml,
                        m.lines().next().unwrap_or_default().to_string(),
                    )
                }
            };
            Err(LoadError::Syntax {
                file: file.to_path_buf(),
                format,
                message,
            })
        }
    }
}

/// One object of a file: a document, a top-level array element, or a List item.
pub(crate) struct Item<'a> {
    pub at: DocRef,
    pub value: &'a Value,
}

/// Flattens documents into objects: top-level arrays and `*List` documents with `items`.
pub(crate) fn items<'a>(
    file: &Path,
    docs: &'a [Value],
    errors: &mut Vec<LoadError>,
) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let at = DocRef::new(file, i + 1);
        let list_kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"));
        if let Value::Array(elems) = doc {
            for (j, v) in elems.iter().enumerate() {
                let at = DocRef {
                    item: format!("[{j}]"),
                    ..at.clone()
                };
                out.push(Item { at, value: v });
            }
        } else if list_kind {
            match doc.get("items") {
                Some(Value::Array(elems)) => {
                    for (j, v) in elems.iter().enumerate() {
                        let at = DocRef {
                            item: format!("items[{j}]"),
                            ..at.clone()
                        };
                        out.push(Item { at, value: v });
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => errors.push(LoadError::shape(
                    &at,
                    "items",
                    format!("expected an array, found {}", describe(other)),
                )),
            }
        } else {
            out.push(Item { at, value: doc });
        }
    }
    out
}

/// `number 5`, `a string`, … for messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Reads an optional string field (`null` = absent).
pub(crate) fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &DocRef,
    path: &str,
    errors: &mut Vec<LoadError>,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(LoadError::shape(
                at,
                join(path, key),
                format!("expected a string, found {}", describe(other)),
            ));
            None
        }
    }
}

/// Reads a required string field.
pub(crate) fn req_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &DocRef,
    path: &str,
    errors: &mut Vec<LoadError>,
) -> Option<&'a str> {
    let present = !matches!(obj.get(key), None | Some(Value::Null));
    let v = opt_str(obj, key, at, path, errors);
    if !present {
        errors.push(LoadError::shape(
            at,
            join(path, key),
            "required field is missing",
        ));
    }
    v
}

pub(crate) fn as_object<'a>(
    v: &'a Value,
    at: &DocRef,
    path: &str,
    errors: &mut Vec<LoadError>,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            errors.push(LoadError::shape(
                at,
                path,
                format!("expected an object, found {}", describe(other)),
            ));
            None
        }
    }
}

/// Joins a path and a field name: `spec` + `route` → `spec.route`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn warn_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
    at: &DocRef,
    path: &str,
    warnings: &mut Vec<LoadWarning>,
) {
    for k in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        warnings.push(LoadWarning {
            at: at.clone(),
            path: join(path, k),
            message: "unknown field, ignored".into(),
        });
    }
}

/// Loads a Route file from its text; `file` is used in messages and to name shorthand Routes.
pub fn load_str(file: &Path, text: &str) -> FileResult {
    let docs = read_documents(file, text).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut routes: Vec<LoadedRoute> = Vec::new();
    let mut first_doc: BTreeMap<String, usize> = BTreeMap::new();
    let mut shorthand = Shorthand::default();

    for item in items(file, &docs, &mut errors) {
        let Some(obj) = as_object(item.value, &item.at, "", &mut errors) else {
            continue;
        };
        if obj.contains_key("kind") || obj.contains_key("apiVersion") {
            if let Some(r) = route_object(&item.at, obj, &mut errors, &mut warnings) {
                if let Some(first) = first_doc.get(&r.name) {
                    errors.push(LoadError::DuplicateName {
                        at: item.at.named(route::KIND, &r.name),
                        name: r.name.clone(),
                        first: *first,
                    });
                } else {
                    first_doc.insert(r.name.clone(), item.at.document);
                    routes.push(r);
                }
            }
        } else {
            shorthand.entry(&item.at, obj, &mut errors, &mut warnings);
        }
    }

    if let Some(first) = shorthand.first_doc {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        if let Some(doc) = first_doc.get(&name) {
            errors.push(LoadError::DuplicateName {
                at: DocRef::new(file, first),
                name,
                first: *doc,
            });
        } else {
            routes.push(LoadedRoute {
                name,
                spec: shorthand.spec,
                origin: Origin {
                    file: file.to_path_buf(),
                    document: first,
                },
                shorthand: true,
                rules: shorthand.rules,
            });
        }
    }

    if errors.is_empty() {
        Ok(RouteFile {
            file: file.to_path_buf(),
            routes,
            warnings,
        })
    } else {
        Err(errors)
    }
}

/// Loads one Route file.
pub fn load_file(path: &Path) -> FileResult {
    let text = std::fs::read_to_string(path).map_err(|source| {
        vec![LoadError::Io {
            file: path.to_path_buf(),
            source,
        }]
    })?;
    load_str(path, &text)
}

/// Whether `path` names a config file [`load_dir`] reads: `*.yaml`, `*.yml` or `*.json`, not
/// hidden (names starting with `.` are skipped: editor files, and the `..data` links of a
/// mounted ConfigMap, whose files appear again under their own names).
pub fn is_config_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !name.starts_with('.')
        && ["yaml", "yml", "json"]
            .iter()
            .any(|x| ext.eq_ignore_ascii_case(x))
}

/// Loads every config file in `dir` (see [`is_config_file`]; symlinks followed, not
/// recursive), sorted by file name. Each file's result is separate. Fails only if the directory
/// itself cannot be read.
#[allow(clippy::result_large_err)]
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, FileResult)>, LoadError> {
    let io_err = |source| LoadError::Io {
        file: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if is_config_file(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|p| {
            let r = load_file(&p);
            (p, r)
        })
        .collect())
}

/// Parses a `kind: Route` object.
fn route_object(
    at: &DocRef,
    obj: &Map<String, Value>,
    errors: &mut Vec<LoadError>,
    warnings: &mut Vec<LoadWarning>,
) -> Option<LoadedRoute> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if api_version != Some(route::API_VERSION) || kind != Some(route::KIND) {
        errors.push(LoadError::WrongKind {
            at: at.clone(),
            api_version: api_version.map(String::from),
            kind: kind.map(String::from),
            expected: "a Route (apiVersion \"k8s.ovn.org/v1\", kind \"Route\")",
        });
        return None;
    }
    let before = errors.len();
    let name = match obj.get("metadata") {
        Some(m) => as_object(m, at, "metadata", errors)
            .and_then(|m| req_str(m, "name", at, "metadata", errors)),
        None => {
            errors.push(LoadError::shape(
                at,
                "metadata.name",
                "required field is missing",
            ));
            None
        }
    }?;
    let at = at.named(route::KIND, name);
    if let Err(problem) = route::check_object_name(name) {
        errors.push(LoadError::Invalid {
            at: at.clone(),
            path: "metadata.name".into(),
            value: name.into(),
            problem,
        });
    }
    warn_unknown(
        obj,
        &["apiVersion", "kind", "metadata", "spec", "status"],
        &at,
        "",
        warnings,
    );
    let spec = match obj.get("spec") {
        None | Some(Value::Null) => RouteSpec::default(),
        Some(v) => spec_from_value(&at, v, errors, warnings)?,
    };
    if errors.len() > before {
        return None;
    }
    match spec.check() {
        Ok(checked) => {
            warnings.extend(checked.warnings.into_iter().map(|w| LoadWarning {
                at: at.clone(),
                path: w.path,
                message: w.message,
            }));
            Some(LoadedRoute {
                name: name.to_string(),
                spec,
                origin: Origin {
                    file: at.file.clone(),
                    document: at.document,
                },
                shorthand: false,
                rules: checked.rules,
            })
        }
        Err(es) => {
            errors.extend(es.into_iter().map(|e| LoadError::invalid(&at, e)));
            None
        }
    }
}

const SPEC_FIELDS: &[&str] = &[
    "route",
    "svc",
    "feature_gate",
    "podSelector",
    "namespaceSelector",
    "namespaces",
    "pods",
    "workloads",
    "exclude",
    "priority",
];

/// Reads `spec` field by field, so type errors carry a path.
fn spec_from_value(
    at: &DocRef,
    v: &Value,
    errors: &mut Vec<LoadError>,
    warnings: &mut Vec<LoadWarning>,
) -> Option<RouteSpec> {
    let before = errors.len();
    let obj = as_object(v, at, "spec", errors)?;
    warn_unknown(obj, SPEC_FIELDS, at, "spec", warnings);
    let mut spec = RouteSpec::default();
    let elems = |key: &str, errors: &mut Vec<LoadError>| -> Vec<(String, &Value)> {
        let path = format!("spec.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("{path}[{i}]"), e))
                .collect(),
            Some(other) => {
                errors.push(LoadError::shape(
                    at,
                    path,
                    format!("expected an array, found {}", describe(other)),
                ));
                vec![]
            }
        }
    };
    for (p, v) in elems("route", errors) {
        let Some(m) = as_object(v, at, &p, errors) else {
            continue;
        };
        warn_unknown(m, &["dst", "dev", "via"], at, &p, warnings);
        let dst = req_str(m, "dst", at, &p, errors);
        let dev = req_str(m, "dev", at, &p, errors);
        let via = opt_str(m, "via", at, &p, errors);
        if let (Some(dst), Some(dev)) = (dst, dev) {
            spec.route.push(RouteRule {
                dst: dst.into(),
                dev: dev.into(),
                via: via.map(String::from),
            });
        }
    }
    for (p, v) in elems("svc", errors) {
        let Some(m) = as_object(v, at, &p, errors) else {
            continue;
        };
        warn_unknown(m, &["namespace", "name", "dev", "via"], at, &p, warnings);
        let namespace = req_str(m, "namespace", at, &p, errors);
        let name = req_str(m, "name", at, &p, errors);
        let dev = req_str(m, "dev", at, &p, errors);
        let via = opt_str(m, "via", at, &p, errors);
        if let (Some(namespace), Some(name), Some(dev)) = (namespace, name, dev) {
            spec.svc.push(SvcRule {
                namespace: namespace.into(),
                name: name.into(),
                dev: dev.into(),
                via: via.map(String::from),
            });
        }
    }
    match obj.get("feature_gate") {
        None | Some(Value::Null) => {}
        Some(v) => {
            if let Some(m) = as_object(v, at, "spec.feature_gate", errors) {
                for k in m.keys() {
                    if let Some(s) = opt_str(m, k, at, "spec.feature_gate", errors) {
                        spec.feature_gate.insert(k.clone(), s.to_string());
                    }
                }
            }
        }
    }
    // The selection fields are plain serde types; a type error names the top-level field.
    fn field<T: serde::de::DeserializeOwned + Default>(
        obj: &Map<String, Value>,
        key: &str,
        at: &DocRef,
        errors: &mut Vec<LoadError>,
    ) -> T {
        match obj.get(key) {
            None | Some(Value::Null) => T::default(),
            Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|e| {
                errors.push(LoadError::shape(at, format!("spec.{key}"), e.to_string()));
                T::default()
            }),
        }
    }
    spec.pod_selector = field(obj, "podSelector", at, errors);
    spec.namespace_selector = field(obj, "namespaceSelector", at, errors);
    spec.namespaces = field(obj, "namespaces", at, errors);
    spec.pods = field(obj, "pods", at, errors);
    spec.workloads = field(obj, "workloads", at, errors);
    spec.exclude = field(obj, "exclude", at, errors);
    spec.priority = field(obj, "priority", at, errors);
    (errors.len() == before).then_some(spec)
}

/// Accumulates a file's shorthand entries into its synthetic Route.
#[derive(Default)]
struct Shorthand {
    first_doc: Option<usize>,
    spec: RouteSpec,
    rules: Vec<CheckedRule>,
}

impl Shorthand {
    fn entry(
        &mut self,
        at: &DocRef,
        obj: &Map<String, Value>,
        errors: &mut Vec<LoadError>,
        warnings: &mut Vec<LoadWarning>,
    ) {
        self.first_doc.get_or_insert(at.document);
        let route = obj.get("route").is_some_and(Value::is_string);
        let svc = obj.get("svc").is_some_and(Value::is_string);
        if route == svc {
            let message = if route {
                "has both \"route\" and \"svc\"; write one entry for each"
            } else {
                "is neither a Route (apiVersion \"k8s.ovn.org/v1\", kind \"Route\") nor a \
                 shorthand entry ({\"route\": \"CIDR\", \"dev\": …} or {\"svc\": \
                 \"namespace/name\", \"dev\": …})"
            };
            errors.push(LoadError::shape(at, "", message));
            return;
        }
        let key = if route { "route" } else { "svc" };
        warn_unknown(obj, &[key, "dev", "via"], at, "", warnings);
        let before = errors.len();
        let target = obj[key].as_str().unwrap_or_default();
        let dev = req_str(obj, "dev", at, "", errors);
        let via = opt_str(obj, "via", at, "", errors).filter(|v| !v.is_empty());
        let mut bad = |path: &str, value: &str, problem: Problem| {
            errors.push(LoadError::Invalid {
                at: at.clone(),
                path: path.into(),
                value: value.into(),
                problem,
            })
        };
        let checked_target = if route {
            route::check_dst(target)
                .map(route::Target::Cidr)
                .map_err(|p| bad("route", target, p))
                .ok()
        } else {
            match target.split_once('/') {
                Some((ns, name)) => {
                    if let Err(p) = route::check_namespace(ns) {
                        bad("svc", target, p);
                    } else if let Err(p) = route::check_service_name(name) {
                        bad("svc", target, p);
                    }
                    Some(route::Target::Service(NamespacedName {
                        namespace: ns.into(),
                        name: name.into(),
                    }))
                }
                None => {
                    bad("svc", target, Problem::NotServiceRef);
                    None
                }
            }
        };
        if let Some(d) = dev
            && let Err(p) = route::check_dev(d)
        {
            bad("dev", d, p);
        }
        let family = match &checked_target {
            Some(route::Target::Cidr(n)) => Some(route::Family::of(&n.addr())),
            _ => None,
        };
        let via_ip = via.and_then(|v| {
            route::check_via(v, family)
                .map_err(|p| bad("via", v, p))
                .ok()
        });
        if errors.len() > before {
            return;
        }
        let (Some(target), Some(dev)) = (checked_target, dev) else {
            return;
        };
        match &target {
            route::Target::Cidr(_) => self.spec.route.push(RouteRule {
                dst: obj[key].as_str().unwrap_or_default().into(),
                dev: dev.into(),
                via: via.map(String::from),
            }),
            route::Target::Service(s) => self.spec.svc.push(SvcRule {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                dev: dev.into(),
                via: via.map(String::from),
            }),
        }
        self.rules.push(CheckedRule {
            path: at.in_file(),
            target,
            dev: dev.into(),
            via: via_ip,
        });
    }
}

/// The Routes of a directory as last loaded successfully, file by file.
///
/// A file that fails to load keeps its previous good version (or stays absent if it never
/// loaded); a file that disappeared is dropped.
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    files: BTreeMap<PathBuf, RouteFile>,
}

impl RouteSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the view of a whole directory with `load_dir`'s results; returns the errors of
    /// the files that kept their previous version (or were skipped).
    pub fn update_dir(&mut self, results: Vec<(PathBuf, FileResult)>) -> Vec<LoadError> {
        let present: std::collections::BTreeSet<&PathBuf> =
            results.iter().map(|(p, _)| p).collect();
        self.files.retain(|p, _| present.contains(p));
        let mut errors = Vec::new();
        for (path, r) in results {
            if let Err(es) = self.update_file(path, r) {
                errors.extend(es);
            }
        }
        errors
    }

    /// Applies one file's reload; on error keeps the previous version and returns the errors.
    pub fn update_file(&mut self, path: PathBuf, result: FileResult) -> Result<(), Vec<LoadError>> {
        match result {
            Ok(f) => {
                self.files.insert(path, f);
                Ok(())
            }
            Err(es) => Err(es),
        }
    }

    /// Forgets a deleted file.
    pub fn remove_file(&mut self, path: &Path) {
        self.files.remove(path);
    }

    /// The loaded files, by path.
    pub fn files(&self) -> impl Iterator<Item = &RouteFile> {
        self.files.values()
    }

    /// Every Route, files in path order, Routes in file order.
    pub fn routes(&self) -> impl Iterator<Item = &LoadedRoute> {
        self.files.values().flat_map(|f| f.routes.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> FileResult {
        load_str(Path::new(name), text)
    }

    fn errs(name: &str, text: &str) -> Vec<String> {
        load(name, text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const DEMO_BAD_DST: &str = r#"
apiVersion: k8s.ovn.org/v1
kind: Route
metadata: {name: other}
spec: {route: [], svc: []}
---
apiVersion: k8s.ovn.org/v1
kind: Route
metadata:
  name: demo
spec:
  route:
    - dst: 172.16.11.0/24
      dev: eth0
    - dst: "172.16.10.0/33"
      dev: eth1
"#;

    #[test]
    fn bad_dst_error_names_file_document_route_path_and_value() {
        assert_eq!(
            errs("routes.yaml", DEMO_BAD_DST),
            [
                r#"routes.yaml: document 2 (Route "demo"): spec.route[1].dst: "172.16.10.0/33" is not a CIDR"#
            ]
        );
        let e = load("routes.yaml", DEMO_BAD_DST).unwrap_err().remove(0);
        let LoadError::Invalid {
            at,
            path,
            value,
            problem,
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(at.file, Path::new("routes.yaml"));
        assert_eq!(at.document, 2);
        assert_eq!(at.object, Some(("Route".into(), "demo".into())));
        assert_eq!(
            (path.as_str(), value.as_str()),
            ("spec.route[1].dst", "172.16.10.0/33")
        );
        assert_eq!(problem, Problem::NotCidr);
    }

    #[test]
    fn host_bits_are_rejected_with_the_network_suggested() {
        assert_eq!(
            errs("r.yaml", "route: 10.0.0.1/8\ndev: eth1\n"),
            [
                r#"r.yaml: document 1: route: "10.0.0.1/8" has host bits set (did you mean "10.0.0.0/8"?)"#
            ]
        );
    }

    #[test]
    fn bad_dev_via_and_service_names_have_exact_messages() {
        let text = r#"[
            {"route": "172.16.0.0/16", "dev": "eth 1"},
            {"route": "172.16.0.0/16", "dev": "eth1", "via": "10.0.0.256"},
            {"route": "172.16.0.0/16", "dev": "eth1", "via": "fd00::1"},
            {"svc": "nginx", "dev": "eth0"},
            {"svc": "Default/nginx", "dev": "eth0"},
            {"svc": "default/nginx.x", "dev": "averyveryverylongname"}
        ]"#;
        assert_eq!(
            errs("s.json", text),
            [
                r#"s.json: document 1 [0]: dev: "eth 1" is not a valid interface name: it contains whitespace"#,
                r#"s.json: document 1 [1]: via: "10.0.0.256" is not an IP address"#,
                r#"s.json: document 1 [2]: via: "fd00::1" is an IPv6 address, but dst is IPv4"#,
                r#"s.json: document 1 [3]: svc: "nginx" is not "namespace/name""#,
                r#"s.json: document 1 [4]: svc: "Default/nginx" is not a valid namespace (DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"#,
                r#"s.json: document 1 [5]: svc: "default/nginx.x" is not a valid Service name (DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"#,
                r#"s.json: document 1 [5]: dev: "averyveryverylongname" is not a valid interface name: it is longer than 15 bytes"#,
            ]
        );
    }

    #[test]
    fn structural_errors_name_the_field() {
        let text = r#"
apiVersion: k8s.ovn.org/v1
kind: Route
metadata: {name: demo}
spec:
  route:
    - dst: 10.0.0.0/8
    - dst: 10.1.0.0/16
      dev: 5
    - "eth0"
  svc: {}
  priority: high
"#;
        assert_eq!(
            errs("r.yaml", text),
            [
                r#"r.yaml: document 1 (Route "demo"): spec.route[0].dev: required field is missing"#,
                r#"r.yaml: document 1 (Route "demo"): spec.route[1].dev: expected a string, found number 5"#,
                r#"r.yaml: document 1 (Route "demo"): spec.route[2]: expected an object, found string "eth0""#,
                r#"r.yaml: document 1 (Route "demo"): spec.svc: expected an array, found an object"#,
                r#"r.yaml: document 1 (Route "demo"): spec.priority: invalid type: string "high", expected i32"#,
            ]
        );
    }

    #[test]
    fn wrong_kind_missing_name_and_non_shorthand_objects_are_rejected() {
        let text = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: k8s.ovn.org/v1\nkind: Route\nspec: {}\n---\ndev: eth0\n---\nroute: 10.0.0.0/8\nsvc: a/b\ndev: eth0\n";
        assert_eq!(
            errs("x.yaml", text),
            [
                r#"x.yaml: document 1: apiVersion "v1", kind "ConfigMap" is not a Route (apiVersion "k8s.ovn.org/v1", kind "Route")"#,
                r#"x.yaml: document 2: metadata.name: required field is missing"#,
                r#"x.yaml: document 3: is neither a Route (apiVersion "k8s.ovn.org/v1", kind "Route") nor a shorthand entry ({"route": "CIDR", "dev": …} or {"svc": "namespace/name", "dev": …})"#,
                r#"x.yaml: document 4: has both "route" and "svc"; write one entry for each"#,
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_format() {
        let e = errs("a.yaml", "route: [1\n");
        assert!(
            e[0].starts_with("a.yaml: not valid YAML: unclosed bracket '['"),
            "{e:?}"
        );
        let e = errs("a.json", "{\"route\": ");
        assert!(
            e[0].starts_with("a.json: not valid JSON: EOF while parsing"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_route_names_in_one_file_are_rejected() {
        let doc = "apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {name: a}\n";
        assert_eq!(
            errs("d.yaml", &format!("{doc}---\n{doc}")),
            [
                r#"d.yaml: document 2 (Route "a"): a Route named "a" is already defined in document 1"#
            ]
        );
    }

    #[test]
    fn shorthand_entries_become_one_route_named_after_the_file() {
        let text = "svc: default/nginx1\ndev: eth0\n---\n- route: 172.16.0.0/16\n  dev: eth1\n  via: 10.124.2.1\n- {svc: kube-system/dns, dev: eth1, via: ''}\n";
        let f = load("dir/steer.yaml", text).unwrap();
        assert_eq!(f.routes.len(), 1);
        let r = &f.routes[0];
        assert_eq!(
            (r.name.as_str(), r.shorthand, r.origin.document),
            ("steer.yaml", true, 1)
        );
        let paths: Vec<_> = r.rules.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, ["document 1", "document 2 [0]", "document 2 [1]"]);
        assert_eq!(r.rules[1].via, Some("10.124.2.1".parse().unwrap()));
        assert_eq!(r.spec.route.len(), 1);
        assert_eq!(r.spec.svc.len(), 2);
    }

    #[test]
    fn flow_style_yaml_starting_with_a_brace_is_read_as_yaml() {
        let f = load("f.conf", "{svc: default/nginx, dev: eth0}\n").unwrap();
        assert_eq!(f.routes[0].rules.len(), 1);
    }

    #[test]
    fn unknown_fields_are_warnings() {
        let text = r#"{"apiVersion":"k8s.ovn.org/v1","kind":"Route","metadata":{"name":"w"},
            "spec":{"route":[{"dst":"10.0.0.0/8","dev":"eth0","metric":1}],"podselector":{}},"extra":1}"#;
        let f = load("w.json", text).unwrap();
        let w: Vec<_> = f.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                r#"w.json: document 1 (Route "w"): extra: unknown field, ignored"#,
                r#"w.json: document 1 (Route "w"): spec.podselector: unknown field, ignored"#,
                r#"w.json: document 1 (Route "w"): spec.route[0].metric: unknown field, ignored"#,
            ]
        );
    }

    #[test]
    fn only_yaml_1_2_booleans_so_yes_no_on_n_stay_strings() {
        let text = "apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {name: b}\nspec:\n  namespaces: [no, n, on]\n  feature_gate: {a: yes}\n";
        let f = load("b.yaml", text).unwrap();
        assert_eq!(f.routes[0].spec.namespaces, ["no", "n", "on"]);
        assert_eq!(f.routes[0].spec.feature_gate["a"], "yes");
        assert_eq!(
            errs("b.yaml", "route: 10.0.0.0/8\ndev: true\n"),
            ["b.yaml: document 1: dev: expected a string, found boolean true"]
        );
    }

    #[test]
    fn empty_file_loads_as_no_routes() {
        assert_eq!(load("e.yaml", "").unwrap().routes, vec![]);
        assert_eq!(load("e.yaml", "# nothing\n---\n").unwrap().routes, vec![]);
    }

    #[test]
    fn config_file_names_are_yaml_yml_json_and_not_hidden() {
        for ok in ["a.yaml", "b.YML", "dir/c.json"] {
            assert!(is_config_file(Path::new(ok)), "{ok}");
        }
        for no in [".a.yaml", "..data", "a.txt", "a.yaml.swp", "yaml"] {
            assert!(!is_config_file(Path::new(no)), "{no}");
        }
    }
}
