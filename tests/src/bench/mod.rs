//! The benchmark harness behind `cargo xtask bench` (`veer-bench`): statistics over interleaved
//! rounds, a small JSON writer, SVG plots and the parts that need namespaces and the real agent.
//!
//! - [`traffic`]: CPU per packet at a fixed offered load, TCP throughput and UDP
//!   request/response latency, each veer-steered against the routed design (parts B and C);
//! - [`fanout`]: lean pods (a namespace with two veths each), rule fan-out against the best
//!   netlink implementation of the routed design and `ip` per pod, pod attach latency and the
//!   agent's footprint (parts D and E);
//! - [`k8s`]: Kubernetes mode, watch event → rule in the pinned trie, with the real agent loop
//!   against a fake API server (part F).
//!
//! Every figure is the median of interleaved runs (A B A B …) with the spread (min–max of the
//! runs) shown next to it. Nothing here asserts on a time: the output is a report.

pub mod fanout;
pub mod k8s;
pub mod plot;
pub mod traffic;

use std::fmt::{self, Write as _};

/// Median and range of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    /// Median (upper median for an even count), min and max of `v` (not empty).
    pub fn of(v: &[f64]) -> Self {
        assert!(!v.is_empty(), "no runs");
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        Self {
            median: s[s.len() / 2],
            min: s[0],
            max: s[s.len() - 1],
            runs: s.len(),
        }
    }

    /// `{median, min, max, runs}`.
    pub fn json(&self) -> J {
        J::obj([
            ("median", J::N(self.median)),
            ("min", J::N(self.min)),
            ("max", J::N(self.max)),
            ("runs", J::N(self.runs as f64)),
        ])
    }

    /// `median (min–max)` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }
}

/// `p`-quantile (0..=1) of `v` by nearest rank.
pub fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A JSON value, written by [`fmt::Display`] (the bench writes JSON only).
#[derive(Debug, Clone)]
pub enum J {
    Null,
    B(bool),
    N(f64),
    S(String),
    A(Vec<J>),
    O(Vec<(String, J)>),
}

impl J {
    pub fn obj<'a>(fields: impl IntoIterator<Item = (&'a str, J)>) -> J {
        J::O(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn s(v: impl Into<String>) -> J {
        J::S(v.into())
    }
}

fn esc(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for J {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            J::Null => f.write_str("null"),
            J::B(b) => write!(f, "{b}"),
            J::N(n) if n.is_finite() => {
                if n.fract() == 0.0 && n.abs() < 1e15 {
                    write!(f, "{}", *n as i64)
                } else {
                    write!(f, "{n:.3}")
                }
            }
            J::N(_) => f.write_str("null"),
            J::S(s) => esc(s, f),
            J::A(v) => {
                f.write_char('[')?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_char(']')
            }
            J::O(v) => {
                f.write_char('{')?;
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    esc(k, f)?;
                    write!(f, ":{x}")?;
                }
                f.write_char('}')
            }
        }
    }
}

/// What one part of the benchmark produced.
pub struct Section {
    /// File stem of its JSON (`target/bench/<key>.json`).
    pub key: &'static str,
    /// Markdown, starting with its `##` heading.
    pub md: String,
    pub json: J,
    /// SVG plots: (file name, SVG text).
    pub plots: Vec<(String, String)>,
    /// The aims this part reports against.
    pub aims: Vec<Aim>,
}

/// An aim and what was measured against it (reported, never asserted).
pub struct Aim {
    pub aim: String,
    pub measured: String,
    pub met: bool,
    /// One line on why, when missed.
    pub why: String,
}

impl Aim {
    pub fn new(aim: &str, measured: String, met: bool, why: &str) -> Self {
        Self {
            aim: aim.into(),
            measured,
            met,
            why: if met { String::new() } else { why.into() },
        }
    }
}

/// The machine the figures come from: (CPU model, cores, kernel, load average at start).
pub fn machine() -> (String, usize, String, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    (cpu, cores, kernel, load)
}

/// CPU time consumed by the calling thread (`CLOCK_THREAD_CPUTIME_ID`), in ns. Without
/// `CONFIG_IRQ_TIME_ACCOUNTING` this includes the softirq work (veth receive, forwarding) the
/// kernel runs inline when the thread re-enables bottom halves after a transmit.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Total run time (ns, `/proc/<pid>/schedstat`) of every `ksoftirqd/N` thread: softirq work
/// the kernel deferred instead of running it inline.
pub fn ksoftirqd_ns() -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        let is_ksoftirqd =
            std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"));
        if is_ksoftirqd {
            total += std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Whether the kernel was built with `CONFIG_IRQ_TIME_ACCOUNTING` (`None`: unknown).
pub fn irq_time_accounting() -> Option<bool> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let cfg = std::fs::read_to_string(format!("/boot/config-{}", rel.trim()))
        .ok()
        .or_else(|| {
            let out = crate::programs::command("zcat")
                .arg("/proc/config.gz")
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
    Some(cfg.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}
