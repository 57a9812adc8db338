//! Event-time watermark and lateness.
//!
//! The watermark for epoch `t` is the latest valid event time seen in all epochs before `t`
//! (across every worker). It is known once the stats stream's frontier has passed `t - 1`, and it
//! depends only on the input, never on the worker count or on scheduling.
//!
//! An event from Kafka is judged against the later of `W` and its partition's watermark: the
//! latest valid event time before it in its own partition. A partition read without a pause
//! never lets `W` pass its own watermark (`W` is the minimum over busy partitions), so there an
//! event's class is a function of its partition's log alone: the same however the partitions
//! were interleaved into epochs, however many workers read them, and however often the
//! pipeline restarted. `W` decides only for events that arrive on a partition after it was idle
//! while others moved on, and for files (read in fixed chunks, so also a function of the input).
//!
//! Against that watermark `W`, with billing periods of `period` and a `tolerance`:
//! - an event older than `W - dedup_horizon` is too old (its duplicates may have been forgotten);
//! - a period `P` is closed once `W >= end(P) + tolerance`; an event for a closed period is
//!   accepted as late and billed as an adjustment in the period containing `W`;
//! - otherwise the event counts in its own period (out of order if it is behind `W`).

use std::collections::BTreeMap;

use meterflow_schemas::rows::Arrival;
use meterflow_schemas::time::{EventTime, Period, PeriodUnit, Span};

use crate::decode::{EpochStats, PartitionTime};
use crate::Epoch;

/// The lateness rules of a run.
#[derive(Clone, Copy, Debug)]
pub struct LatenessPolicy {
    pub period: PeriodUnit,
    pub tolerance: Span,
    pub dedup_horizon: Span,
}

/// Where an event goes, given the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    TooOld,
    Accept {
        service: Period,
        invoice: Period,
        arrival: Arrival,
    },
}

impl LatenessPolicy {
    pub fn classify(&self, watermark: EventTime, t: EventTime) -> Verdict {
        self.at(watermark).classify(t)
    }

    /// The rules for one epoch, with everything that depends only on the watermark precomputed.
    pub fn at(&self, watermark: EventTime) -> EpochLateness {
        let known = watermark != EventTime::MIN;
        let same_periods = if known {
            // Watermarks from `lo` to before `hi` share the open and the late-invoice period.
            let (open, now) = (
                self.period.period_of(watermark.minus(self.tolerance)),
                self.period.period_of(watermark),
            );
            (
                open.0.plus(self.tolerance).max(now.0),
                self.period
                    .end_of(open)
                    .plus(self.tolerance)
                    .min(self.period.end_of(now)),
            )
        } else {
            (EventTime(1), EventTime(0))
        };
        EpochLateness {
            same_periods,
            unit: self.period,
            watermark,
            too_old_before: self.forget_before(watermark),
            // The period holding `W - tolerance` is the earliest still open: its end plus the
            // tolerance lies after W; every earlier period's does not.
            open_from: if known {
                self.period.period_of(watermark.minus(self.tolerance)).0
            } else {
                EventTime::MIN
            },
            late_invoice: self
                .period
                .period_of(if known { watermark } else { EventTime(0) }),
            cached: (EventTime(1), EventTime(0), Period(EventTime(0))),
        }
    }

    /// Events before this time can no longer be accepted, so dedup state for them may go.
    pub fn forget_before(&self, watermark: EventTime) -> EventTime {
        if watermark == EventTime::MIN {
            EventTime::MIN
        } else {
            watermark.minus(self.dedup_horizon)
        }
    }
}

/// Lateness decisions against one watermark.
#[derive(Clone, Copy, Debug)]
pub struct EpochLateness {
    unit: PeriodUnit,
    watermark: EventTime,
    too_old_before: EventTime,
    /// Start of the earliest open period; events before it are late.
    open_from: EventTime,
    /// Where late events are billed: the period holding the watermark.
    late_invoice: Period,
    /// The last service period seen, as `[start, end)`: events mostly share it.
    cached: (EventTime, EventTime, Period),
    /// The watermarks, as `[lo, hi)`, with the same `open_from` and `late_invoice`.
    same_periods: (EventTime, EventTime),
}

impl EpochLateness {
    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    /// Moves these rules to a later watermark `w` (an event's partition ahead of the epoch's
    /// watermark), recomputing periods only when `w` leaves the ones this watermark is in.
    pub fn move_to(&mut self, policy: &LatenessPolicy, w: EventTime) {
        let (lo, hi) = self.same_periods;
        if w >= lo && w < hi {
            self.watermark = w;
            self.too_old_before = policy.forget_before(w);
        } else {
            *self = policy.at(w);
        }
    }

    pub fn classify(&mut self, t: EventTime) -> Verdict {
        if t < self.too_old_before {
            return Verdict::TooOld;
        }
        let service = self.service_period(t);
        if t < self.open_from {
            return Verdict::Accept {
                service,
                invoice: self.late_invoice,
                arrival: Arrival::Late,
            };
        }
        let arrival = if t < self.watermark {
            Arrival::OutOfOrder
        } else {
            Arrival::OnTime
        };
        Verdict::Accept {
            service,
            invoice: service,
            arrival,
        }
    }

    fn service_period(&mut self, t: EventTime) -> Period {
        let (start, end, period) = self.cached;
        if t >= start && t < end {
            return period;
        }
        let period = self.unit.period_of(t);
        self.cached = (period.0, self.unit.end_of(period), period);
        period
    }
}

/// Folds per-epoch statistics into the watermark, epoch by epoch.
///
/// Files are read in order, so their watermark is the latest event time read. Kafka partitions
/// are read side by side and one may race ahead of another (a backlog replayed after downtime):
/// there the watermark is the minimum, over partitions that are not idle, of the latest time
/// read from each, so an event waiting in a slow partition is not judged against a fast one.
/// Idle partitions (read to their end, and nothing new from them for `kafka.idle_after`) do not
/// hold it back; a partition with nothing read yet that is not idle (a backlog, or a producer
/// still to write) holds it where it is. The watermark never moves backwards.
///
/// A commit records [`WatermarkTracker::partitions`] with the watermark, and a resumed run
/// starts from both ([`WatermarkTracker::resuming`]): every partition's latest time and idleness
/// are what they were at the commit, so the epochs after it are judged exactly as an
/// uninterrupted run judges the same epochs. Nothing has to be read or re-earned first. (One
/// exception, decided by the Kafka reader: a partition that was idle but has a backlog now is
/// not idle, since an uninterrupted run would have read those messages as they came.)
#[derive(Clone, Default)]
pub struct WatermarkTracker {
    pending: BTreeMap<Epoch, (Option<EventTime>, Vec<PartitionTime>)>,
    /// Latest time over all epochs folded so far.
    latest: Option<EventTime>,
    /// Per Kafka partition: latest time read and whether it is idle.
    partitions: BTreeMap<(u32, i32), (Option<EventTime>, bool)>,
    /// The watermark handed out last.
    floor: Option<EventTime>,
    folded_through: Option<Epoch>,
}

impl WatermarkTracker {
    /// The tracker of a run resumed after a commit that recorded `watermark` and `partitions`.
    pub fn resuming(
        watermark: Option<EventTime>,
        partitions: &[PartitionTime],
    ) -> WatermarkTracker {
        WatermarkTracker {
            // Every valid event read came from a file (then the watermark is the latest time)
            // or from a partition (then its latest time is recorded).
            latest: partitions
                .iter()
                .map(|p| p.max_time)
                .fold(watermark, Option::max),
            floor: watermark,
            partitions: partitions
                .iter()
                .map(|p| ((p.source, p.partition), (p.max_time, p.idle)))
                .collect(),
            ..WatermarkTracker::default()
        }
    }

    /// The watermark handed out last (`None` before the first).
    pub fn floor(&self) -> Option<EventTime> {
        self.floor.filter(|&w| w != EventTime::MIN)
    }

    /// Every partition's latest time and idleness, through the epochs folded so far: what a
    /// commit records beside the watermark.
    pub fn partitions(&self) -> Vec<PartitionTime> {
        self.partitions
            .iter()
            .map(|(&(source, partition), &(max_time, idle))| PartitionTime {
                source,
                partition,
                max_time,
                idle,
            })
            .collect()
    }

    pub fn observe(&mut self, stats: &EpochStats) {
        let (max, partitions) = self.pending.entry(stats.epoch).or_default();
        *max = (*max).max(stats.max_time);
        partitions.extend_from_slice(&stats.partitions);
    }

    /// The watermark for `epoch`. Call only once every epoch before it has been observed, and
    /// with non-decreasing epochs.
    ///
    /// The watermark moves epoch by epoch, whichever epochs it is asked for: every worker and
    /// the committer see the same value for the same epoch, however few epochs they ask about.
    pub fn watermark_for(&mut self, epoch: Epoch) -> EventTime {
        debug_assert!(self.folded_through.is_none_or(|f| f <= epoch));
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= epoch {
                break;
            }
            let (max, partitions) = entry.remove();
            self.latest = self.latest.max(max);
            for p in partitions {
                let state = self
                    .partitions
                    .entry((p.source, p.partition))
                    .or_insert((None, false));
                state.0 = state.0.max(p.max_time);
                state.1 = p.idle;
            }
            self.floor = self.floor.max(self.candidate());
        }
        self.folded_through = Some(epoch);
        self.floor.unwrap_or(EventTime::MIN)
    }

    /// The watermark the partitions' state allows now, before the never-backwards floor.
    fn candidate(&self) -> Option<EventTime> {
        if self.partitions.is_empty() {
            return self.latest;
        }
        // `None` (nothing read yet) orders first, so it holds the watermark.
        let mut behind = self
            .partitions
            .values()
            .filter(|(_, idle)| !idle)
            .map(|(latest, _)| *latest)
            .peekable();
        match behind.peek() {
            None => self.latest,
            Some(_) => behind.min().flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> EventTime {
        EventTime::parse_rfc3339(s).unwrap()
    }

    fn policy() -> LatenessPolicy {
        LatenessPolicy {
            period: PeriodUnit::Month,
            tolerance: Span::hours(1),
            dedup_horizon: Span::days(7),
        }
    }

    #[test]
    fn periods_close_after_the_tolerance() {
        let p = policy();
        let oct = PeriodUnit::Month.period_of(t("2026-10-31T23:00:00Z"));
        let nov = PeriodUnit::Month.period_of(t("2026-11-01T00:00:00Z"));
        // Watermark 30 minutes into November: October is still open.
        let w = t("2026-11-01T00:30:00Z");
        assert_eq!(
            p.classify(w, t("2026-10-31T23:00:00Z")),
            Verdict::Accept {
                service: oct,
                invoice: oct,
                arrival: Arrival::OutOfOrder
            }
        );
        // Exactly end + tolerance: closed, billed in November as an adjustment.
        let w = t("2026-11-01T01:00:00Z");
        assert_eq!(
            p.classify(w, t("2026-10-31T23:00:00Z")),
            Verdict::Accept {
                service: oct,
                invoice: nov,
                arrival: Arrival::Late
            }
        );
        assert_eq!(
            p.classify(w, t("2026-11-02T00:00:00Z")),
            Verdict::Accept {
                service: nov,
                invoice: nov,
                arrival: Arrival::OnTime
            }
        );
        // Older than the dedup horizon.
        assert_eq!(p.classify(w, t("2026-10-24T00:59:59Z")), Verdict::TooOld);
        // No watermark yet: everything is on time.
        assert!(matches!(
            p.classify(EventTime::MIN, t("2020-01-01T00:00:00Z")),
            Verdict::Accept {
                arrival: Arrival::OnTime,
                ..
            }
        ));
    }

    #[test]
    fn the_watermark_only_uses_earlier_epochs() {
        let mut w = WatermarkTracker::default();
        w.observe(&EpochStats {
            epoch: 0,
            max_time: Some(EventTime(10)),
            positions: Vec::new(),
            partitions: Vec::new(),
            lag: Vec::new(),
        });
        w.observe(&EpochStats {
            epoch: 1,
            max_time: Some(EventTime(5)),
            positions: Vec::new(),
            partitions: Vec::new(),
            lag: Vec::new(),
        });
        w.observe(&EpochStats {
            epoch: 2,
            max_time: Some(EventTime(30)),
            positions: Vec::new(),
            partitions: Vec::new(),
            lag: Vec::new(),
        });
        w.observe(&EpochStats {
            epoch: 3,
            max_time: None,
            positions: Vec::new(),
            partitions: Vec::new(),
            lag: Vec::new(),
        });
        assert_eq!(w.watermark_for(0), EventTime::MIN);
        assert_eq!(w.watermark_for(1), EventTime(10));
        assert_eq!(w.watermark_for(2), EventTime(10));
        assert_eq!(w.watermark_for(3), EventTime(30));
        assert_eq!(w.watermark_for(9), EventTime(30));
    }

    fn kafka(epoch: Epoch, parts: &[(i32, Option<i64>, bool)]) -> EpochStats {
        EpochStats {
            epoch,
            max_time: parts.iter().filter_map(|p| p.1).max().map(EventTime),
            positions: Vec::new(),
            partitions: parts
                .iter()
                .map(|&(partition, t, idle)| PartitionTime {
                    source: 0,
                    partition,
                    max_time: t.map(EventTime),
                    idle,
                })
                .collect(),
            lag: Vec::new(),
        }
    }

    #[test]
    fn a_partition_racing_ahead_does_not_move_the_watermark_past_a_slow_one() {
        let mut w = WatermarkTracker::default();
        // Partition 1 has a backlog but delivered nothing yet: no watermark.
        w.observe(&kafka(0, &[(0, Some(1_000), false), (1, None, false)]));
        assert_eq!(w.watermark_for(1), EventTime::MIN);
        // Both delivered: the slower one decides.
        w.observe(&kafka(1, &[(0, Some(9_000), false), (1, Some(100), false)]));
        assert_eq!(w.watermark_for(2), EventTime(100));
        // Partition 0 is idle: only the backlogged one holds the watermark.
        w.observe(&kafka(2, &[(0, None, true), (1, Some(500), false)]));
        assert_eq!(w.watermark_for(3), EventTime(500));
        // Everything read: the latest time read anywhere.
        w.observe(&kafka(3, &[(0, None, true), (1, Some(600), true)]));
        assert_eq!(w.watermark_for(4), EventTime(9_000));
        // New backlog on partition 1 (it has read up to 600): never backwards.
        w.observe(&kafka(4, &[(0, None, true), (1, None, false)]));
        assert_eq!(w.watermark_for(5), EventTime(9_000));
    }

    #[test]
    fn a_resumed_tracker_holds_its_watermark_until_every_backlog_reports() {
        let mut w = WatermarkTracker::resuming(Some(EventTime(700)), &[]);
        w.observe(&kafka(10, &[(0, Some(5_000), false), (1, None, false)]));
        assert_eq!(w.watermark_for(10), EventTime(700));
        assert_eq!(w.watermark_for(11), EventTime(700));
        w.observe(&kafka(
            11,
            &[(0, Some(5_000), false), (1, Some(2_000), false)],
        ));
        assert_eq!(w.watermark_for(12), EventTime(2_000));
    }

    /// Stats of random epochs: three partitions read at different speeds, some epochs with
    /// nothing from a partition, idleness coming and going.
    fn random_epochs(seed: u64, n: u64) -> Vec<EpochStats> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move |m: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let mut clock = [0i64; 3];
        (0..n)
            .map(|epoch| {
                let parts: Vec<(i32, Option<i64>, bool)> = (0..3)
                    .map(|p| {
                        let read = next(3) > 0;
                        if read {
                            clock[p] += next(1_000) as i64 * (p as i64 + 1);
                        }
                        // Late and out-of-order records: the chunk's latest time may lag.
                        let t = read.then(|| clock[p] - next(2_000) as i64);
                        (p as i32, t, !read && next(2) == 0)
                    })
                    .collect();
                kafka(epoch, &parts)
            })
            .collect()
    }

    #[test]
    fn a_tracker_resumed_from_a_commit_hands_out_the_watermarks_of_an_uninterrupted_one() {
        for seed in 0..200 {
            let epochs = random_epochs(seed, 40);
            let mut uninterrupted = WatermarkTracker::default();
            epochs.iter().for_each(|s| uninterrupted.observe(s));
            let expected: Vec<EventTime> =
                (0..=40).map(|e| uninterrupted.watermark_for(e)).collect();
            for commit in 0..40u64 {
                // What `commit_progress` records after epoch `commit`.
                let mut committer = WatermarkTracker::default();
                epochs.iter().for_each(|s| committer.observe(s));
                let watermark =
                    Some(committer.watermark_for(commit + 1)).filter(|&w| w != EventTime::MIN);
                let mut resumed = WatermarkTracker::resuming(watermark, &committer.partitions());
                epochs[commit as usize + 1..]
                    .iter()
                    .for_each(|s| resumed.observe(s));
                for e in commit + 1..=40 {
                    assert_eq!(
                        resumed.watermark_for(e),
                        expected[e as usize],
                        "seed {seed}, resumed after epoch {commit}, watermark for epoch {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn rules_moved_to_a_later_watermark_judge_as_rules_made_for_it() {
        let p = policy();
        let start = t("2026-10-30T00:00:00Z").0;
        let mut moved = p.at(EventTime(start));
        let mut w = start;
        for i in 0..5_000i64 {
            // Steps of up to ~40 minutes, across two month ends and their tolerance hours.
            w += (i * 7_919) % 2_400_000;
            moved.move_to(&p, EventTime(w));
            let mut fresh = p.at(EventTime(w));
            for back in [0, 1, 59 * 60_000, 3_600_000, 86_400_000, 8 * 86_400_000] {
                let e = EventTime(w - back - (i % 1000));
                assert_eq!(
                    moved.classify(e),
                    fresh.classify(e),
                    "watermark {w}, event {e}"
                );
            }
        }
    }

    #[test]
    fn the_watermark_for_an_epoch_does_not_depend_on_which_epochs_were_asked_for() {
        // Dedup asks only for epochs with events on its worker; the committer only at round
        // ends. A partition that becomes busy again can lower the candidate: the floor must
        // still be the same for all of them.
        for seed in 0..200 {
            let epochs = random_epochs(seed, 40);
            let mut every = WatermarkTracker::default();
            let mut some = WatermarkTracker::default();
            for s in &epochs {
                every.observe(s);
                some.observe(s);
            }
            for e in 0..=40 {
                let w = every.watermark_for(e);
                if e % 7 == 3 || e == 40 {
                    assert_eq!(some.watermark_for(e), w, "seed {seed}, epoch {e}");
                }
            }
        }
    }

    #[test]
    fn without_the_partitions_a_resumed_tracker_would_hold_the_watermark_back() {
        // The bug the recorded partitions fix: partition 0 was read to its end and idle at the
        // commit; forgetting that, the resumed run held the watermark until it was idle again.
        let epochs = [
            kafka(0, &[(0, Some(9_000), false), (1, Some(100), false)]),
            kafka(1, &[(0, None, true), (1, Some(200), false)]),
            kafka(2, &[(0, None, false), (1, Some(5_000), false)]),
        ];
        let mut committer = WatermarkTracker::default();
        epochs[..2].iter().for_each(|s| committer.observe(s));
        let w = Some(committer.watermark_for(2));
        assert_eq!(w, Some(EventTime(200)));
        let mut forgetful = WatermarkTracker::resuming(w, &[]);
        let mut resumed = WatermarkTracker::resuming(w, &committer.partitions());
        for t in [&mut forgetful, &mut resumed] {
            t.observe(&epochs[2]);
        }
        assert_eq!(forgetful.watermark_for(3), EventTime(200));
        assert_eq!(resumed.watermark_for(3), EventTime(5_000));
    }
}
