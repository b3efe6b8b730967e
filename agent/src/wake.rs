//! When the agent loops (standalone and Kubernetes) wake up for a change.
//!
//! Both are level-triggered: any change starts a round that recomputes everything. A round
//! starts on the **leading edge** of a change — after a quiet period at once, give or take a
//! short coalescing window (one edit or API change arrives as a few events together: an
//! editor's write-and-rename, a Service and its EndpointSlice) — and, while changes keep
//! coming, no sooner than an interval after the previous round started that grows with the
//! cost of a round ([`interval_after`]: twice the last round's duration, at least
//! [`MIN_INTERVAL`]), so a burst costs one round per interval whatever its size and rounds take
//! at most about half of the agent's time during an event storm.

use std::time::Duration;

/// Coalescing window after the first change of a quiet period.
pub const COALESCE: Duration = Duration::from_millis(5);

/// Shortest time between the starts of two rounds.
pub const MIN_INTERVAL: Duration = Duration::from_millis(20);

/// Longest time between the starts of two rounds while changes keep coming.
pub const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between the start of a round that took `round` and the start of the next:
/// twice its duration (rounds take at most half the agent's time during a burst), within
/// `floor` and [`MAX_INTERVAL`].
pub fn interval_after(round: Duration, floor: Duration) -> Duration {
    (round * 2).clamp(floor, MAX_INTERVAL.max(floor))
}

/// When the round for a change noticed at `changed` starts, the previous round having started
/// at `last_start` (see the module documentation).
pub fn next_round_at<I>(changed: I, last_start: I, coalesce: Duration, min_interval: Duration) -> I
where
    I: Ord + std::ops::Add<Duration, Output = I>,
{
    (changed + coalesce).max(last_start + min_interval)
}

/// Whether a file watch event only says a file was read (opened, read, closed unmodified).
/// Such events never wake a loop: every round reads the files it watches (with the inotify
/// backend, waking on them would loop forever).
pub fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        notify::EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

/// The files the agent itself writes beside its status file (the status file, the rule index,
/// and their temporaries): a change to them never wakes a loop, wherever they live (a status
/// file in a watched input directory would otherwise wake the agent on its own writes, round
/// after round).
#[derive(Debug, Clone, Default)]
pub struct OwnFiles(Vec<std::path::PathBuf>);

impl OwnFiles {
    /// The agent's own outputs for `status_file` (none without one).
    pub fn of_status(status_file: Option<&std::path::Path>) -> Self {
        Self(status_file.map_or_else(Vec::new, |s| {
            let index = crate::report::index::path_for_status(s);
            vec![
                s.with_extension("tmp"),
                index.with_extension("json.tmp"),
                s.to_path_buf(),
                index,
            ]
        }))
    }

    /// Whether `ev` wakes a loop: not a read, and about at least one file that is not the
    /// agent's own.
    pub fn wakes(&self, ev: &notify::Event) -> bool {
        !is_read(&ev.kind) && (ev.paths.is_empty() || ev.paths.iter().any(|p| !self.0.contains(p)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn rounds_start_on_the_leading_edge_and_bursts_are_rate_limited() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let at = |changed: u64, last: u64| {
            next_round_at(t0 + ms(changed), t0 + ms(last), ms(5), ms(100)) - t0
        };
        // Quiet for a while: the round starts after the coalescing window only.
        assert_eq!(at(1_000, 0), ms(1_005));
        assert_eq!(at(100, 0), ms(105));
        // Soon after the previous round: no sooner than the interval.
        assert_eq!(at(10, 0), ms(100));
        assert_eq!(at(96, 0), ms(101));
    }

    #[test]
    fn the_interval_grows_with_the_cost_of_a_round_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(interval_after(ms(1), MIN_INTERVAL), MIN_INTERVAL);
        assert_eq!(interval_after(ms(15), MIN_INTERVAL), ms(30));
        assert_eq!(interval_after(ms(900), MIN_INTERVAL), MAX_INTERVAL);
        assert_eq!(
            interval_after(ms(1), ms(100)),
            ms(100),
            "a larger floor wins"
        );
        assert_eq!(
            interval_after(ms(1), ms(2000)),
            ms(2000),
            "even above the cap"
        );
    }

    #[test]
    fn reading_the_watched_files_does_not_wake_a_loop() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        assert!(is_read(&EventKind::Access(AccessKind::Read)));
        assert!(is_read(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read(&EventKind::Create(CreateKind::File)));
        assert!(!is_read(&EventKind::Modify(ModifyKind::Any)));
    }

    #[test]
    fn the_agents_own_writes_do_not_wake_a_loop_but_inputs_beside_them_do() {
        use notify::{
            Event, EventKind,
            event::{CreateKind, ModifyKind, RenameMode},
        };
        let dir = std::path::Path::new("/x");
        let own = OwnFiles::of_status(Some(&dir.join("status.json")));
        let ev = |kind, names: &[&str]| {
            names
                .iter()
                .fold(Event::new(kind), |e, n| e.add_path(dir.join(n)))
        };
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        for names in [
            &["status.tmp", "status.json"][..],
            &["status.rules.json.tmp", "status.rules.json"],
        ] {
            assert!(!own.wakes(&ev(rename, names)), "{names:?}");
        }
        assert!(!own.wakes(&ev(EventKind::Create(CreateKind::File), &["status.tmp"])));
        assert!(own.wakes(&ev(rename, &["services.yaml.swp", "services.yaml"])));
        assert!(own.wakes(&ev(
            EventKind::Create(CreateKind::File),
            &["debug-request.json"]
        )));
        // Without a status file every non-read event wakes.
        assert!(OwnFiles::default().wakes(&ev(rename, &["status.tmp", "status.json"])));
    }
}
