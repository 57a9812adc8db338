//! Event-time watermark and lateness.
//!
//! The watermark for epoch `t` is the latest valid event time seen in all epochs before `t`
//! (across every worker). It is known once the stats stream's frontier has passed `t - 1`, and it
//! depends only on the input, never on the worker count or on scheduling.
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
        EpochLateness {
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
}

impl EpochLateness {
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
#[derive(Default)]
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
    /// A tracker that already reached `watermark` (a resumed run).
    pub fn starting_at(watermark: Option<EventTime>) -> WatermarkTracker {
        WatermarkTracker {
            latest: watermark,
            floor: watermark,
            ..WatermarkTracker::default()
        }
    }

    pub fn observe(&mut self, stats: &EpochStats) {
        let (max, partitions) = self.pending.entry(stats.epoch).or_default();
        *max = (*max).max(stats.max_time);
        partitions.extend_from_slice(&stats.partitions);
    }

    /// The watermark for `epoch`. Call only once every epoch before it has been observed, and
    /// with non-decreasing epochs.
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
        }
        self.folded_through = Some(epoch);
        let candidate = if self.partitions.is_empty() {
            self.latest
        } else {
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
        };
        self.floor = self.floor.max(candidate);
        self.floor.unwrap_or(EventTime::MIN)
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
        });
        w.observe(&EpochStats {
            epoch: 1,
            max_time: Some(EventTime(5)),
            positions: Vec::new(),
            partitions: Vec::new(),
        });
        w.observe(&EpochStats {
            epoch: 2,
            max_time: Some(EventTime(30)),
            positions: Vec::new(),
            partitions: Vec::new(),
        });
        w.observe(&EpochStats {
            epoch: 3,
            max_time: None,
            positions: Vec::new(),
            partitions: Vec::new(),
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
        let mut w = WatermarkTracker::starting_at(Some(EventTime(700)));
        w.observe(&kafka(10, &[(0, Some(5_000), false), (1, None, false)]));
        assert_eq!(w.watermark_for(10), EventTime(700));
        assert_eq!(w.watermark_for(11), EventTime(700));
        w.observe(&kafka(
            11,
            &[(0, Some(5_000), false), (1, Some(2_000), false)],
        ));
        assert_eq!(w.watermark_for(12), EventTime(2_000));
    }
}
