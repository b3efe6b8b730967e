//! `veer debug on|off|status`: writes the debug-events request beside the status file and
//! waits for the agent to confirm it, or shows the request and what is in force.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::bail;

use crate::{
    cli::debug::{self as report, DebugReport},
    debug::{DebugRequest, request_path, unix_now},
    error_chain,
    report::StatusFile,
};

use super::{Format, print};

/// What `veer debug` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Events on for this long (zero: until switched off).
    On {
        duration: Duration,
        no_wait: bool,
    },
    Off {
        no_wait: bool,
    },
    /// Print the request and what is in force.
    Status {
        format: Format,
    },
}

/// How long to wait for the agent to confirm a request (it applies one within ~200 ms).
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// Carries out `action` with the request file beside `status_file`.
pub fn run(status_file: &Path, action: Action) -> anyhow::Result<()> {
    let path = request_path(status_file);
    let now = unix_now();
    let (req, no_wait) = match action {
        Action::Status { format } => {
            return print(format, &read_report(status_file)?, report::render);
        }
        Action::On { duration, no_wait } => (DebugRequest::on(now, Some(duration)), no_wait),
        Action::Off { no_wait } => (DebugRequest::off(now), no_wait),
    };
    let written = SystemTime::now();
    req.write(&path)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let want = req.active_at(now);
    println!(
        "debug events {} requested ({})",
        if want { "on" } else { "off" },
        path.display()
    );
    if no_wait {
        return Ok(());
    }
    // The agent applies the request and reports it in its next status file.
    let deadline = Instant::now() + CONFIRM_WITHIN;
    loop {
        let r = read_report(status_file)?;
        // Confirmed by a status the agent wrote after the request.
        let fresh = std::fs::metadata(status_file)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= written);
        if r.in_force_is(want) && fresh {
            print!("{}", report::render(&r));
            return Ok(());
        }
        if Instant::now() >= deadline {
            print!("{}", report::render(&r));
            bail!(
                "the agent has not confirmed within 10 s (is it running with --status-file {}?); \
                 the request stays and is applied when it runs",
                status_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The request beside `status_file` and the agent's state in it, now.
fn read_report(status_file: &Path) -> anyhow::Result<DebugReport> {
    let request_file = request_path(status_file);
    let requested =
        DebugRequest::read(&request_file).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let loaded = StatusFile::load(status_file).ok();
    Ok(DebugReport::new(
        request_file,
        requested,
        status_file,
        loaded.as_ref().map(|(s, age)| (s, *age)),
        unix_now(),
    ))
}
