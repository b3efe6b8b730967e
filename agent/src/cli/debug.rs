//! `veer debug status`: the debug-events request and what the agent has in force.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{
    debug::{DebugRequest, DebugState, format_unix},
    report::StatusFile,
};

/// `veer debug status`: the request and what the agent reports in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DebugReport {
    pub request_file: PathBuf,
    /// The request as written (absent: none was ever made).
    pub requested: Option<DebugRequest>,
    /// Whether the request wants the events on now (false once its time is up).
    pub requested_on: bool,
    /// What the agent's status file says is in force (absent: no agent status).
    pub in_force: Option<DebugState>,
    pub status_file: PathBuf,
    /// Age of the status file in seconds.
    pub status_age_s: Option<f64>,
}

impl DebugReport {
    /// The report at unix time `now` of the request read from `request_file` and the agent's
    /// status file (with its age), when readable.
    pub fn new(
        request_file: PathBuf,
        requested: Option<DebugRequest>,
        status_file: &Path,
        status: Option<(&StatusFile, Duration)>,
        now: u64,
    ) -> Self {
        Self {
            request_file,
            requested_on: requested.as_ref().is_some_and(|r| r.active_at(now)),
            requested,
            in_force: status.and_then(|(s, _)| s.debug_events.clone()),
            status_age_s: status.map(|(_, age)| age.as_secs_f64()),
            status_file: status_file.to_path_buf(),
        }
    }

    /// Whether the agent has in force what was asked (`want`: events on).
    pub fn in_force_is(&self, want: bool) -> bool {
        self.in_force.as_ref().is_some_and(|d| d.on == want)
    }
}

/// The table (text) form.
pub fn render(r: &DebugReport) -> String {
    let when = |u: Option<u64>| {
        u.map_or("until switched off".into(), |u| {
            format!("until {}", format_unix(u))
        })
    };
    let requested = match &r.requested {
        None => "nothing (off)".to_string(),
        Some(q) if r.requested_on => format!("on, {}", when(q.until_unix)),
        Some(q) if q.enabled => format!(
            "on, expired at {}",
            when(q.until_unix).trim_start_matches("until ")
        ),
        Some(_) => "off".into(),
    };
    let in_force = match &r.in_force {
        None => format!("unknown (no debug state in {})", r.status_file.display()),
        Some(d) if d.on => format!("on, {}", when(d.until_unix)),
        Some(_) => "off".into(),
    };
    let mut o = format!(
        "Requested: {requested}   ({})\nIn force:  {in_force}",
        r.request_file.display()
    );
    if let Some(age) = r.status_age_s {
        o.push_str(&format!("   (agent status {age:.0} s old)"));
    }
    o.push('\n');
    if let Some(e) = r.in_force.as_ref().and_then(|d| d.error.as_ref()) {
        o.push_str(&format!("Error:     {e}\n"));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Mode;

    const NOW: u64 = 1_700_000_000;

    fn report(requested: Option<DebugRequest>, in_force: Option<DebugState>) -> DebugReport {
        let mut s = StatusFile::new(Mode::Standalone, 1);
        s.debug_events = in_force;
        DebugReport::new(
            "/run/veer/debug.json".into(),
            requested,
            Path::new("/run/veer/status.json"),
            Some((&s, Duration::from_secs(3))),
            NOW,
        )
    }

    #[test]
    fn a_request_on_within_its_time_is_on_and_shows_its_end() {
        let r = report(
            Some(DebugRequest::on(NOW - 60, Some(Duration::from_secs(900)))),
            Some(DebugState {
                on: true,
                until_unix: Some(NOW + 840),
                error: None,
            }),
        );
        assert!(r.requested_on);
        assert!(r.in_force_is(true) && !r.in_force_is(false));
        assert_eq!(r.status_age_s, Some(3.0));
        let t = render(&r);
        let until = format!("on, until {}", format_unix(NOW + 840));
        assert!(
            t.starts_with(&format!("Requested: {until}   (/run/veer/debug.json)\n")),
            "{t}"
        );
        assert!(
            t.contains(&format!("In force:  {until}   (agent status 3 s old)\n")),
            "{t}"
        );
        assert!(!t.contains("Error:"));
    }

    #[test]
    fn an_expired_request_is_off_and_shows_when_it_expired() {
        let r = report(
            Some(DebugRequest::on(NOW - 120, Some(Duration::from_secs(60)))),
            Some(DebugState {
                on: false,
                until_unix: None,
                error: Some("attach failed".into()),
            }),
        );
        assert!(!r.requested_on);
        let t = render(&r);
        assert!(
            t.starts_with(&format!(
                "Requested: on, expired at {}",
                format_unix(NOW - 60)
            )),
            "{t}"
        );
        assert!(t.contains("In force:  off"), "{t}");
        assert!(t.ends_with("Error:     attach failed\n"), "{t}");
    }

    #[test]
    fn without_request_or_agent_state_nothing_is_requested_and_the_state_is_unknown() {
        let r = DebugReport::new("/d".into(), None, Path::new("/s.json"), None, NOW);
        assert!(!r.requested_on && !r.in_force_is(true) && !r.in_force_is(false));
        assert_eq!(
            render(&r),
            "Requested: nothing (off)   (/d)\nIn force:  unknown (no debug state in /s.json)\n"
        );
        let off = report(Some(DebugRequest::off(NOW)), None);
        assert!(render(&off).starts_with("Requested: off   "));
    }
}
