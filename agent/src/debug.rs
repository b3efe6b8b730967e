//! Switching the eBPF debug events on and off at run time, without restarting the agent.
//!
//! The production object has no logging code; the debug object ([`crate::EBPF_DEBUG_OBJ`])
//! emits aya-log events (new steered flow, collision, flow expired, ICMP error
//! reverse-translated, frame too big) while `CFG_F_DEBUG` is set. How the agent swaps one for
//! the other is described in [`crate::dataplane`]; this module is the control around it:
//!
//! - **the request**: `veer debug on [--for 15m]` / `veer debug off` write a small JSON file,
//!   [`DebugRequest`], beside the agent's status file (`/run/veer/debug.json` by default, mode
//!   0600 in a directory only root reaches). It is level-triggered: the agent applies what the
//!   file says whenever it differs from what is in force, also after a restart, and switches
//!   off by itself when the request's time is up (debugging is never left on by accident);
//! - **the agent side**: [`DebugControl::sync`], called every 200 ms from the agent's wait
//!   loop, reads the file, and asks the dataplane ([`DebugEvents`]) to switch. Events are
//!   drained on a thread of their own ([`Drain`]) into `tracing` (target `veer_ebpf`, level
//!   DEBUG, so the default filter `info,veer_ebpf=debug` shows them in the agent's log).
//!
//! A request file that cannot be read or parsed changes nothing: the state in force stays and
//! the error is logged once (and shown by `veer debug status`).

use std::{
    fs,
    io::{self, Write as _},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::dataplane::DebugLog;

/// File name of the request, in the directory of the status file.
pub const REQUEST_FILE: &str = "debug.json";

/// How long `veer debug on` keeps the events on unless told otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15 * 60);

/// Errors of reading or writing the request.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("reading the debug request {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the debug request {path} is not valid JSON of a debug request")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the debug request {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the dataplane has no pin root: the debug object can only share pinned maps")]
    NotPinned,
}

/// The request file's path for an agent writing its status to `status_file`.
pub fn request_path(status_file: &Path) -> PathBuf {
    status_file.with_file_name(REQUEST_FILE)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What an operator asked for (`/run/veer/debug.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugRequest {
    /// Whether debug events are wanted.
    pub enabled: bool,
    /// Unix seconds after which the events go off again; `null`: until switched off.
    #[serde(default)]
    pub until_unix: Option<u64>,
    /// Unix seconds when the request was written.
    #[serde(default)]
    pub requested_unix: u64,
}

impl DebugRequest {
    /// Events on for `duration` from `now` (`None` or zero: until switched off).
    pub fn on(now: u64, duration: Option<Duration>) -> Self {
        Self {
            enabled: true,
            until_unix: duration
                .filter(|d| !d.is_zero())
                .map(|d| now.saturating_add(d.as_secs().max(1))),
            requested_unix: now,
        }
    }

    /// Events off.
    pub fn off(now: u64) -> Self {
        Self {
            enabled: false,
            until_unix: None,
            requested_unix: now,
        }
    }

    /// Whether the request wants events on at `now`.
    pub fn active_at(&self, now: u64) -> bool {
        self.enabled && self.until_unix.is_none_or(|u| now < u)
    }

    /// Reads the request at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, DebugError> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| DebugError::Parse {
                    path: path.into(),
                    source,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DebugError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Writes the request to `path` atomically (a temporary file renamed over it), mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), DebugError> {
        let err = |source| DebugError::Write {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let body = serde_json::to_vec_pretty(self).expect("plain struct serialises");
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, path).map_err(err)
    }
}

/// Unix seconds as an RFC 3339 UTC time (`2026-11-22T03:48:22Z`).
pub fn format_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("@{secs}"), |t| t.to_string())
}

/// Parses a duration: `90`, `90s`, `15m`, `2h`, `1d` (a bare number is seconds; `0`: no
/// limit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 15m, 2h, 1d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A dataplane whose debug events can be switched (the reconcile core). The defaults describe
/// one that cannot (test doubles).
pub trait DebugEvents {
    /// Whether the debug object is in force.
    fn debug_events(&self) -> bool {
        false
    }

    /// Switches to the debug object (`on`) or back to the default one, without detaching
    /// anything. On success with `on`, returns the reader of the new object's events.
    fn set_debug_events(&mut self, on: bool) -> Result<Option<DebugLog>, String> {
        let _ = on;
        Err("this dataplane has no debug object".into())
    }
}

/// Drains a [`DebugLog`] on a thread of its own until dropped.
pub struct Drain {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drain {
    /// Starts the thread.
    pub fn spawn(mut log: DebugLog) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("veer-debug-events".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: log.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the descriptor is owned by `log`, alive here.
                    let n = unsafe { libc::poll(&mut pfd, 1, 200) };
                    if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        tracing::warn!(error = %io::Error::last_os_error(), "debug events: poll failed");
                        return;
                    }
                    if n > 0 {
                        log.flush();
                    }
                }
                // What is left when switched off.
                log.flush();
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What is in force, for the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugState {
    /// Whether the debug object is attached and `CFG_F_DEBUG` set.
    pub on: bool,
    /// Unix seconds when the events go off by themselves.
    pub until_unix: Option<u64>,
    /// Why the last request could not be read or carried out, if it could not.
    pub error: Option<String>,
}

/// The agent side of the switch (see the module documentation).
pub struct DebugControl {
    path: PathBuf,
    drain: Option<Drain>,
    state: DebugState,
    /// The last switch that failed: what it wanted and when (retried after [`RETRY_SECS`]).
    failed: Option<(bool, u64)>,
}

/// Seconds before a switch that failed is tried again.
pub const RETRY_SECS: u64 = 10;

impl DebugControl {
    /// Control by the request file beside `status_file`.
    pub fn new(status_file: &Path) -> Self {
        Self {
            path: request_path(status_file),
            drain: None,
            state: DebugState::default(),
            failed: None,
        }
    }

    /// The request file this control reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is in force.
    pub fn state(&self) -> &DebugState {
        &self.state
    }

    /// Reads the request and switches `dp` when it wants otherwise than what is in force.
    /// Returns whether anything changed (the state in force or its error).
    pub fn sync(&mut self, dp: &mut impl DebugEvents, now: u64) -> bool {
        let before = self.state.clone();
        let want = match DebugRequest::read(&self.path) {
            Ok(r) => {
                if self.failed.is_none() {
                    self.state.error = None;
                }
                r
            }
            Err(e) => {
                let msg = crate::error_chain(&e);
                if self.state.error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "debug request ignored; debug events stay as they are");
                }
                self.state.error = Some(msg);
                return self.state != before;
            }
        };
        let on = want.as_ref().is_some_and(|r| r.active_at(now));
        self.state.until_unix = want.filter(|_| on).and_then(|r| r.until_unix);
        let backing_off = self
            .failed
            .is_some_and(|(w, t)| w == on && now < t.saturating_add(RETRY_SECS));
        if on != dp.debug_events() && !backing_off {
            match dp.set_debug_events(on) {
                Ok(log) => {
                    self.failed = None;
                    self.drain = None;
                    if let Some(log) = log {
                        match Drain::spawn(log) {
                            Ok(d) => self.drain = Some(d),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot start the debug event reader")
                            }
                        }
                    }
                    tracing::info!(
                        on,
                        until_unix = self.state.until_unix,
                        "eBPF debug events switched {}",
                        if on { "on" } else { "off" }
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, on, "cannot switch the eBPF debug events; retrying in {RETRY_SECS} s");
                    self.failed = Some((on, now));
                    self.state.error = Some(e);
                }
            }
        }
        self.state.on = dp.debug_events();
        if on == self.state.on {
            // Nothing left to do: a failure of an earlier request no longer matters.
            self.failed = None;
            self.state.error = None;
        }
        if !self.state.on {
            self.state.until_unix = None;
        }
        self.state != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "m",
            "15 minutes",
            "-1s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unix_times_print_as_rfc3339() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_795_319_302), "2026-11-22T03:48:22Z");
    }

    #[test]
    fn a_request_expires_at_its_time_and_off_is_never_active() {
        let r = DebugRequest::on(1000, Some(Duration::from_secs(60)));
        assert_eq!(r.until_unix, Some(1060));
        assert!(r.active_at(1000) && r.active_at(1059));
        assert!(!r.active_at(1060));
        let forever = DebugRequest::on(1000, Some(Duration::ZERO));
        assert_eq!(forever.until_unix, None);
        assert!(forever.active_at(u64::MAX));
        assert!(!DebugRequest::off(1000).active_at(1000));
    }

    /// A dataplane double that counts switches and can be made to fail.
    #[derive(Default)]
    struct Double {
        on: bool,
        switches: u32,
        fail: bool,
    }

    impl DebugEvents for Double {
        fn debug_events(&self) -> bool {
            self.on
        }
        fn set_debug_events(&mut self, on: bool) -> Result<Option<DebugLog>, String> {
            if self.fail {
                return Err("refused".into());
            }
            self.on = on;
            self.switches += 1;
            Ok(None)
        }
    }

    #[test]
    fn control_follows_the_request_file_level_triggered() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DebugControl::new(&dir.path().join("status.json"));
        assert_eq!(c.path(), dir.path().join(REQUEST_FILE));
        let mut dp = Double::default();
        // No file: off, nothing to do.
        assert!(!c.sync(&mut dp, 100));
        assert_eq!(dp.switches, 0);
        DebugRequest::on(100, Some(Duration::from_secs(10)))
            .write(c.path())
            .unwrap();
        assert!(c.sync(&mut dp, 101));
        assert!(dp.on);
        assert_eq!(c.state().until_unix, Some(110));
        // Level-triggered: nothing more while the request holds.
        assert!(!c.sync(&mut dp, 105));
        assert_eq!(dp.switches, 1);
        // Time is up: off by itself, the file unchanged.
        assert!(c.sync(&mut dp, 110));
        assert!(!dp.on);
        assert_eq!(c.state(), &DebugState::default());
        // Switched on again until switched off, then off.
        DebugRequest::on(200, None).write(c.path()).unwrap();
        assert!(c.sync(&mut dp, 200));
        assert!(dp.on && c.state().until_unix.is_none());
        DebugRequest::off(201).write(c.path()).unwrap();
        assert!(c.sync(&mut dp, 201));
        assert!(!dp.on);
        assert_eq!(dp.switches, 4);
    }

    #[test]
    fn a_bad_request_file_keeps_the_state_in_force_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DebugControl::new(&dir.path().join("status.json"));
        let mut dp = Double::default();
        DebugRequest::on(0, None).write(c.path()).unwrap();
        c.sync(&mut dp, 1);
        assert!(dp.on);
        fs::write(c.path(), b"{\"enabled\": yes}").unwrap();
        assert!(c.sync(&mut dp, 2));
        assert!(dp.on, "a broken request must not switch anything");
        let err = c.state().error.clone().expect("error reported");
        assert!(
            err.contains("debug.json") && err.contains("not valid JSON"),
            "{err}"
        );
        // Reported once: no change on the next poll.
        assert!(!c.sync(&mut dp, 3));
        // A dataplane that refuses keeps its state; the error is reported.
        DebugRequest::off(4).write(c.path()).unwrap();
        dp.fail = true;
        assert!(c.sync(&mut dp, 4));
        assert!(dp.on);
        assert_eq!(c.state().error.as_deref(), Some("refused"));
        assert!(c.state().on);
        // Not retried at every poll; retried after RETRY_SECS, and then it works.
        dp.fail = false;
        assert!(!c.sync(&mut dp, 5));
        assert!(dp.on);
        assert!(c.sync(&mut dp, 4 + RETRY_SECS));
        assert!(!dp.on);
        assert_eq!(c.state(), &DebugState::default());
    }

    #[test]
    fn the_request_file_is_private_to_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join(REQUEST_FILE);
        DebugRequest::on(0, None).write(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            DebugRequest::read(&p).unwrap(),
            Some(DebugRequest::on(0, None))
        );
        assert_eq!(DebugRequest::read(&dir.path().join("none")).unwrap(), None);
    }
}
