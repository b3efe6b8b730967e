//! Metric names, label matchers and grouping labels of PromQL expressions (the alerts of
//! `manifests/monitoring/prometheusrule.yaml`, the panels of `veer-dashboard.json`), so tests can
//! check them against what the agent serves. Not a PromQL parser: a tokenizer that knows which
//! identifiers are functions, keywords, labels or durations, and rejects what it does not
//! understand (unbalanced brackets, bare `{…}` selectors, unterminated strings) instead of
//! guessing. Depends only on serde_json: `agent/tests/manifests.rs` includes this file with
//! `#[path]` (the checks without an agent), `tests/tests/e2e_cli.rs` uses it as
//! `veer_tests::promql` (the checks against a running agent's `/metrics`).

use serde_json::Value;

/// A label matcher of a selector: `label op "value"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    pub value: String,
}

impl Matcher {
    /// The label values this matcher requires to exist: the value of `=`, or every alternative
    /// of a `=~` made only of literal alternatives (`drop|error`); none for negative matchers,
    /// real regexes and Grafana variables (`$node`).
    pub fn required_values(&self) -> Vec<String> {
        let literal = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match self.op.as_str() {
            "=" if !self.value.contains('$') => vec![self.value.clone()],
            "=~" if self.value.split('|').all(literal) => {
                self.value.split('|').map(str::to_string).collect()
            }
            _ => vec![],
        }
    }
}

/// One series selector: `metric{matchers}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

/// What an expression refers to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refs {
    pub selectors: Vec<Selector>,
    /// Labels of `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`,
    /// `group_right (…)`.
    pub grouping: Vec<String>,
}

/// Keywords followed by a parenthesised label list.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Keywords that are neither metrics nor functions.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric selectors and grouping labels of `expr`.
pub fn refs(expr: &str) -> Result<Refs, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Refs::default();
    let mut i = 0;
    let mut depth: i32 = 0;
    let skip_ws = |mut j: usize| {
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let ident_at = |mut j: usize| {
        let start = j;
        while j < s.len() && is_ident(s[j]) {
            j += 1;
        }
        (s[start..j].iter().collect::<String>(), j)
    };
    let string_at = |j: usize| -> Result<(String, usize), String> {
        let q = s[j];
        let mut k = j + 1;
        let mut v = String::new();
        while k < s.len() && s[k] != q {
            if s[k] == '\\' && k + 1 < s.len() {
                k += 1;
            }
            v.push(s[k]);
            k += 1;
        }
        if k >= s.len() {
            return Err(format!("unterminated string at {j} in {expr:?}"));
        }
        Ok((v, k + 1))
    };
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = string_at(i)?.1;
        } else if c == '[' {
            // Range or subquery: durations and Grafana variables, never metrics.
            let end = s[i..]
                .iter()
                .position(|&x| x == ']')
                .ok_or_else(|| format!("unclosed [ in {expr:?}"))?;
            i += end + 1;
        } else if c == '{' {
            return Err(format!(
                "selector without a metric name at {i} in {expr:?} (not supported here)"
            ));
        } else if c == '$' {
            // A Grafana variable outside a range (`$__interval` as a number): not a metric.
            i += 1;
            while i < s.len() && (is_ident(s[i]) || s[i] == '{' || s[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers, durations (`5m`), exponents.
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let (word, j) = ident_at(i);
            let k = skip_ws(j);
            let next = s.get(k).copied();
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if next == Some('(') {
                    let end = s[k..]
                        .iter()
                        .position(|&x| x == ')')
                        .ok_or_else(|| format!("unclosed {word} ( in {expr:?}"))?;
                    let list: String = s[k + 1..k + end].iter().collect();
                    for l in list.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                        if !l.chars().all(is_ident) {
                            return Err(format!("label {l:?} in {word} (…) of {expr:?}"));
                        }
                        out.grouping.push(l.to_string());
                    }
                    i = k + end + 1;
                } else {
                    // group_left without a list.
                    i = j;
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || next == Some('(')
                || ["by", "without"]
                    .iter()
                    .any(|kw| ident_at(k).0.eq_ignore_ascii_case(kw))
            {
                // Binary operator keyword, a function, or an aggregation (`sum by (…) (…)`).
                i = j;
            } else {
                let mut sel = Selector {
                    metric: word,
                    matchers: vec![],
                };
                i = j;
                if next == Some('{') {
                    let mut m = k + 1;
                    loop {
                        m = skip_ws(m);
                        match s.get(m) {
                            Some('}') => {
                                m += 1;
                                break;
                            }
                            Some(',') => {
                                m += 1;
                                continue;
                            }
                            Some(&ch) if is_ident_start(ch) => {}
                            other => {
                                return Err(format!("bad matcher at {m} ({other:?}) in {expr:?}"));
                            }
                        }
                        let (label, after) = ident_at(m);
                        let o = skip_ws(after);
                        let op: String = match (s.get(o), s.get(o + 1)) {
                            (Some('='), Some('~')) => "=~".into(),
                            (Some('!'), Some('=')) => "!=".into(),
                            (Some('!'), Some('~')) => "!~".into(),
                            (Some('='), _) => "=".into(),
                            _ => return Err(format!("no operator after {label} in {expr:?}")),
                        };
                        let v = skip_ws(o + op.len());
                        if !matches!(s.get(v), Some('"' | '\'' | '`')) {
                            return Err(format!("no quoted value for {label} in {expr:?}"));
                        }
                        let (value, after) = string_at(v)?;
                        sel.matchers.push(Matcher { label, op, value });
                        m = after;
                    }
                    i = m;
                }
                out.selectors.push(sel);
            }
        } else {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '}' | ']' => return Err(format!("unbalanced {c} at {i} in {expr:?}")),
                _ => {}
            }
            if depth < 0 {
                return Err(format!("unbalanced ) at {i} in {expr:?}"));
            }
            i += 1;
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {expr:?}"));
    }
    Ok(out)
}

/// `label_values(<selector>, <label>)` of a Grafana template variable: the selector's expression
/// and the label.
pub fn grafana_label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    Some((sel.trim(), label.trim()))
}

/// The OpenMetrics sample names a PromQL metric name may stand for, and the family type each
/// needs: `x_total` is a counter `x`, `x_bucket`/`x_sum`/`x_count` a histogram `x`, anything
/// else a gauge (or unknown) named as it is.
pub fn family_of(metric: &str) -> (String, &'static str) {
    if let Some(f) = metric.strip_suffix("_total") {
        return (f.to_string(), "counter");
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(f) = metric.strip_suffix(suffix) {
            return (f.to_string(), "histogram");
        }
    }
    (metric.to_string(), "gauge")
}

/// Where a PromQL expression comes from (for messages) and the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub origin: String,
    pub expr: String,
}

/// Every alert's and recording rule's `expr` of a PrometheusRule (as JSON).
pub fn rule_exprs(rule: &Value) -> Vec<Expr> {
    let mut out = Vec::new();
    for g in rule["spec"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            out.push(Expr {
                origin: format!("rule {}/{name}", g["name"].as_str().unwrap_or("?")),
                expr: r["expr"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    out
}

/// Every panel target's `expr` of a Grafana dashboard, rows' nested panels included.
pub fn dashboard_exprs(dashboard: &Value) -> Vec<Expr> {
    fn walk(panels: &Value, out: &mut Vec<Expr>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Expr {
                    origin: format!(
                        "panel {:?} target {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    expr: t["expr"].as_str().unwrap_or("").to_string(),
                });
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The queries of a dashboard's `query` template variables (`label_values(…)`).
pub fn dashboard_variable_queries(dashboard: &Value) -> Vec<Expr> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| Expr {
            origin: format!("variable {}", v["name"].as_str().unwrap_or("?")),
            expr: v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or("")
                .to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_metrics_matchers_and_grouping_labels() {
        let r = refs(
            r#"histogram_quantile(0.9, sum by (node, le) (rate(veer_x_bucket{node=~"$node", class=~"drop|error"}[$__rate_interval]))) > 5 and on(pod) up offset 5m"#,
        )
        .unwrap();
        let names: Vec<&str> = r.selectors.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(names, ["veer_x_bucket", "up"]);
        assert_eq!(r.grouping, ["node", "le", "pod"]);
        let m = &r.selectors[0].matchers;
        assert_eq!(m.len(), 2);
        assert!(m[0].required_values().is_empty());
        assert_eq!(m[1].required_values(), ["drop", "error"]);
        let agg = refs("sum by (route) (rate(veer_y_total[5m])) or max without(a) (z)").unwrap();
        let names: Vec<&str> = agg.selectors.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(names, ["veer_y_total", "z"]);
        assert_eq!(agg.grouping, ["route", "a"]);
        assert!(refs("sum(rate(x{a=\"b\"}[5m])").is_err());
        assert!(refs("{__name__=\"x\"}").is_err());
        assert_eq!(
            grafana_label_values("label_values(veer_ready, node)"),
            Some(("veer_ready", "node"))
        );
        assert_eq!(family_of("veer_a_total"), ("veer_a".into(), "counter"));
        assert_eq!(family_of("veer_b_count"), ("veer_b".into(), "histogram"));
        assert_eq!(family_of("veer_c"), ("veer_c".into(), "gauge"));
    }
}
