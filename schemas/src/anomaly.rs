//! Usage anomalies: spikes, drops and silent meters per customer × SKU, judged bucket by bucket
//! (hourly by default) against a seasonal, robust baseline.
//!
//! ## The rule
//!
//! A *meter* is one customer's usage of one SKU, summed into buckets of event time. A bucket is
//! *reported* when it holds events. For bucket `h`:
//!
//! - **Baseline.** The same bucket on each of the last `weeks` weeks (weekly seasonality), when at
//!   least 3 of them are known; otherwise the same bucket on up to 5 of the last 14 days of the same
//!   kind (weekday or weekend: daily seasonality without mixing Sundays into Mondays), when at
//!   least 3 are known. A bucket is known from the meter's first reported bucket within the
//!   baseline's reach on; earlier ones are history meterflow has not seen, not zeros. At least
//!   the median bucket of the baseline must hold `min_events` events: a meter that reports only a
//!   few times an hour is too sparse to judge hour by hour. No baseline, no verdict: a new meter
//!   never pages.
//! - **Expected** is the median of the baseline. The **score** is robust and on a log scale, since
//!   usage varies by ratios (a spike to 3× and a drop to ⅓ score alike): with
//!   `l(x) = ln(x + min_volume / 10)`, score = `(l(observed) − median l(baseline)) / scale`, where
//!   `scale` is 1.4826 × the median absolute deviation of `l(baseline)`, but at least
//!   `ln(1 + relative_floor)` (so a perfectly regular meter does not page for a small wobble).
//! - **Spike:** score ≥ `threshold` and observed ≥ `min_volume`. Judged on open buckets too (usage
//!   only grows a spike), so it fires before the hour ends.
//! - **Drop:** a closed, reported bucket with score ≤ −`threshold` and expected ≥ `min_volume`.
//! - **Silent meter:** `silent_after` closed buckets in a row without events, each of which
//!   expected at least `min_volume`. One anomaly per silence, at the first bucket where it holds.
//! - **Severity:** `critical` at twice the threshold and for silent meters, else `warning`.
//!
//! A bucket is *closed* once the event-time watermark has passed its end. The verdict of bucket
//! `h` depends only on the buckets in `[h − reach, h]` and on whether `h` is closed, and it is
//! recomputed whenever one of them changes (a late event, a correction). So the anomalies are a
//! function of the usage and the watermark, not of arrival order or of restarts; a verdict that
//! no longer holds is retracted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CustomerIdx, SkuIdx};
use crate::hashing::FxHashMap;
use crate::money::{Amount, Quantity};
use crate::time::{EventTime, Span};

mod rules;
mod series;
pub use series::Bucket;

pub use rules::AnomalyRules;
use rules::DAY_MS;

/// What kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    Spike,
    Drop,
    Silent,
    /// Gross margin under the floor: usage costs too much to serve for what it is billed.
    Cost,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 4] = [
        AnomalyKind::Spike,
        AnomalyKind::Drop,
        AnomalyKind::Silent,
        AnomalyKind::Cost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::Drop => "drop",
            AnomalyKind::Silent => "silent",
            AnomalyKind::Cost => "cost",
        }
    }

    pub fn parse(text: &str) -> Option<AnomalyKind> {
        AnomalyKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        [Severity::Warning, Severity::Critical]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Which history the expected value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Baseline {
    /// The same bucket on this many previous weeks.
    Weekly(u8),
    /// The same bucket on this many previous days of the same kind (weekday or weekend).
    Daily(u8),
    /// A cost anomaly: the gross-margin floor, in percent.
    Margin(u8),
}

impl Baseline {
    pub fn label(self) -> String {
        match self {
            Baseline::Weekly(n) => format!("weekly:{n}"),
            Baseline::Daily(n) => format!("daily:{n}"),
            Baseline::Margin(n) => format!("margin:{n}"),
        }
    }

    pub fn parse(text: &str) -> Option<Baseline> {
        let (kind, n) = text.split_once(':')?;
        let n: u8 = n.parse().ok()?;
        match kind {
            "weekly" => Some(Baseline::Weekly(n)),
            "daily" => Some(Baseline::Daily(n)),
            "margin" => Some(Baseline::Margin(n)),
            _ => None,
        }
    }

    fn describe(self, buckets: i64) -> String {
        let same = if buckets == 1 {
            "the same hour"
        } else {
            "the same hours"
        };
        match self {
            Baseline::Weekly(n) => format!("{same} on the {n} previous weeks"),
            Baseline::Daily(n) => format!("{same} on {n} recent days of the same kind"),
            Baseline::Margin(n) => format!("a {n}% gross-margin floor"),
        }
    }
}

/// One anomaly of one meter (signed on output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Anomaly {
    pub customer: CustomerIdx,
    pub sku: SkuIdx,
    pub kind: AnomalyKind,
    /// The window: from the first bucket concerned to the end of the last.
    pub start: EventTime,
    pub end: EventTime,
    /// Usage in the window.
    pub observed: Quantity,
    /// What the baseline expected for the window.
    pub expected: Quantity,
    /// Robust score in hundredths (0 for silent meters).
    pub score_centi: i64,
    pub severity: Severity,
    pub baseline: Baseline,
}

impl Anomaly {
    pub fn score(&self) -> f64 {
        self.score_centi as f64 / 100.0
    }

    /// A sentence for people: what happened, against what, how sure.
    pub fn explain(&self, catalog: &Catalog) -> String {
        let customer = &catalog.customers[self.customer.ix()].id;
        let sku = &catalog.skus[self.sku.ix()].id;
        let hours = (self.end.0 - self.start.0) as f64 / 3_600_000.0;
        let buckets = if hours == 1.0 { 1 } else { 2 };
        let window = format!("{} to {}", short_time(self.start), short_time(self.end));
        let basis = self.baseline.describe(buckets);
        let (obs, exp) = (self.observed, self.expected);
        match self.kind {
            AnomalyKind::Spike => format!(
                "{customer} used {} {sku} from {window}, {} times the {} expected from {basis} (robust score {:.2})",
                trimmed(obs), ratio(obs, exp), trimmed(exp), self.score()
            ),
            AnomalyKind::Drop => format!(
                "{customer} used {} {sku} from {window}, {}% of the {} expected from {basis} (robust score {:.2})",
                trimmed(obs), percent(obs, exp), trimmed(exp), self.score()
            ),
            AnomalyKind::Silent => format!(
                "{customer} reported no {sku} from {window}; {} was expected from {basis}; check the meter and its producer",
                trimmed(exp)
            ),
            AnomalyKind::Cost => format!(
                "{customer}'s {sku} from {window} cost {} to serve and bills {}: a gross margin of {:.2}%, under {basis}; check the rate card and the customer's discounts",
                trimmed(obs), trimmed(exp), self.score()
            ),
        }
    }
}

fn short_time(t: EventTime) -> String {
    let c = t.civil();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute
    )
}

/// A quantity without trailing zeros.
fn trimmed(q: Quantity) -> String {
    let s = q.to_string();
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn ratio(a: Quantity, b: Quantity) -> String {
    if b.0 <= 0 {
        return "∞".into();
    }
    format!("{:.1}", a.0 as f64 / b.0 as f64)
}

fn percent(a: Quantity, b: Quantity) -> String {
    if b.0 <= 0 {
        return "0".into();
    }
    format!("{:.0}", 100.0 * a.0 as f64 / b.0 as f64)
}

/// The cost anomaly of a customer's SKU in a period, if its gross margin is under the floor:
/// `revenue` is what the usage bills (exact, before invoice-level terms), `cost` what it costs
/// to serve (`unit_cost × quantity`).
pub fn cost_anomaly(
    rules: &AnomalyRules,
    meter: MeterKey,
    window: (EventTime, EventTime),
    revenue: Amount,
    cost: Amount,
) -> Option<Anomaly> {
    let (revenue_q, cost_q) = (revenue.to_quantity(), cost.to_quantity());
    if cost_q < rules.min_cost || cost.0 <= 0 {
        return None;
    }
    // margin < floor  ⇔  (revenue − cost) × 100 < floor × revenue, exactly.
    let floor = rules.min_margin_percent as i128;
    if (revenue.0 - cost.0) * 100 >= floor * revenue.0 {
        return None;
    }
    let margin_centi = if revenue.0 > 0 {
        ((revenue.0 - cost.0) as f64 / revenue.0 as f64 * 10_000.0).round() as i64
    } else {
        -10_000
    };
    Some(Anomaly {
        customer: meter.0,
        sku: meter.1,
        kind: AnomalyKind::Cost,
        start: window.0,
        end: window.1,
        observed: cost_q,
        expected: revenue_q,
        score_centi: margin_centi,
        severity: if revenue.0 < cost.0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        baseline: Baseline::Margin(rules.min_margin_percent),
    })
}

/// A bucket of one meter, as written to `usage_buckets` (signed on output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketRow {
    pub customer: CustomerIdx,
    pub sku: SkuIdx,
    pub start: EventTime,
    pub usage: Bucket,
}

/// One customer's usage of one SKU.
pub type MeterKey = (CustomerIdx, SkuIdx);

#[derive(Default)]
struct Meter {
    buckets: series::Series,
    /// The current verdict of each bucket that has one.
    verdicts: BTreeMap<i64, Anomaly>,
    /// Buckets that gained or lost all their usage since the last evaluation: every verdict
    /// within reach after them may change (what a meter's history is known from may move).
    flipped: Vec<i64>,
    /// Buckets whose usage changed (and had usage before and after): only the verdicts that
    /// look at them may change.
    touched: Vec<i64>,
    /// Held buckets with at least `min_events` events. A baseline needs its median there, so a
    /// meter without any has no expectation anywhere: nothing to judge (most meters of a
    /// platform with many small customers, and the bulk of the buckets to judge).
    dense: u32,
}

impl Meter {
    fn at(&self, b: i64) -> Bucket {
        self.buckets.get(b).unwrap_or_default()
    }

    /// Adds `usage` to bucket `b`, keeping `dense` (`min_events` from the rules); returns the
    /// bucket before and after.
    fn add(&mut self, b: i64, usage: Bucket, min_events: i64) -> (Bucket, Bucket) {
        let (before, after) = self.buckets.add(b, usage);
        let dense = |u: Bucket| u.reported() && u.events >= min_events;
        self.dense = self.dense + dense(after) as u32 - dense(before) as u32;
        (before, after)
    }

    /// Forgets the buckets before `b`.
    fn forget_before(&mut self, b: i64, min_events: i64) {
        while let Some(usage) = self.buckets.pop_before(b) {
            self.dense -= (usage.events >= min_events) as u32;
        }
    }

    /// Whether some verdict of this meter may be an anomaly: with no bucket dense enough for
    /// a baseline, every verdict is "none".
    fn judgeable(&self, min_events: i64) -> bool {
        min_events <= 0 || self.dense > 0
    }
}

/// The streaming detector: usage goes in bucket by bucket, the watermark closes buckets, and
/// verdicts come out as signed changes.
///
/// Usage can change up to the dedup horizon behind the watermark, so verdicts older than that
/// are final and forgotten, and the buckets they were judged from with them: what it holds is
/// bounded by the horizon plus the baseline's reach.
pub struct Detector {
    rules: AnomalyRules,
    /// Buckets before this one are closed.
    closed_upto: i64,
    /// Verdicts more than this many buckets behind the closed ones are final.
    final_lag: i64,
    /// Buckets more than this many behind the closed ones are no longer needed.
    data_lag: i64,
    meters: FxHashMap<MeterKey, Meter>,
    min_volume: Vec<Quantity>,
}

impl Detector {
    /// `horizon`: how far behind the watermark usage can still change (the dedup horizon).
    pub fn new(rules: AnomalyRules, horizon: Span, catalog: &Catalog) -> Detector {
        let bucket = rules.bucket.millis();
        let final_lag = (horizon.millis() + bucket - 1).div_euclid(bucket) + 1;
        let data_lag = final_lag + rules.reach() + rules.silent_after as i64 + 1;
        let min_volume = (0..catalog.skus.len())
            .map(|i| rules.min_volume_for(catalog, SkuIdx(i as u32)))
            .collect();
        Detector {
            rules,
            closed_upto: i64::MIN,
            final_lag,
            data_lag,
            meters: FxHashMap::default(),
            min_volume,
        }
    }

    /// At watermark `w`: the earliest bucket start still held, and the earliest window end of a
    /// verdict still held (what a resumed run restores).
    pub fn held_from(&self, w: EventTime) -> (EventTime, EventTime) {
        if w == EventTime::MIN {
            return (EventTime::MIN, EventTime::MIN);
        }
        let closed = self.closed_before(w);
        (
            self.rules.start_of(closed.saturating_sub(self.data_lag)),
            self.rules
                .start_of(closed.saturating_sub(self.final_lag) + 1),
        )
    }

    fn closed_before(&self, w: EventTime) -> i64 {
        if w == EventTime::MIN {
            return i64::MIN;
        }
        // Bucket b is closed when its end, (b + 1) × bucket, is at or before the watermark.
        (w.0 + 1).div_euclid(self.rules.bucket.millis())
    }

    /// Restores a meter's bucket (a resumed run); emits nothing.
    pub fn seed_bucket(&mut self, key: MeterKey, start: EventTime, usage: Bucket) {
        let b = self.rules.bucket_of(start);
        let min_events = self.rules.min_events as i64;
        self.meters
            .entry(key)
            .or_default()
            .add(b, usage, min_events);
    }

    /// Restores a verdict the output already holds (a resumed run). Cost anomalies are not the
    /// detector's.
    pub fn seed_verdict(&mut self, a: Anomaly) {
        if a.kind == AnomalyKind::Cost {
            return;
        }
        let b = self.rules.bucket_of(EventTime(a.end.0 - 1));
        self.meters
            .entry((a.customer, a.sku))
            .or_default()
            .verdicts
            .insert(b, a);
    }

    /// Continues from watermark `w` (a resumed run, whose buckets and verdicts up to `w` are
    /// seeded).
    pub fn resume_at(&mut self, w: EventTime) {
        self.closed_upto = self.closed_before(w);
    }

    /// Everything held: the buckets and verdicts (what a resumed run re-emits).
    pub fn held(&self) -> (Vec<BucketRow>, Vec<Anomaly>) {
        let mut rows = Vec::new();
        let mut verdicts = Vec::new();
        for (&(customer, sku), m) in &self.meters {
            for (b, usage) in m.buckets.iter() {
                rows.push(BucketRow {
                    customer,
                    sku,
                    start: self.rules.start_of(b),
                    usage,
                });
            }
            verdicts.extend(m.verdicts.values().cloned());
        }
        (rows, verdicts)
    }

    /// Adds usage to a bucket; returns the bucket before and after.
    pub fn add(&mut self, key: MeterKey, t: EventTime, usage: Bucket) -> (Bucket, Bucket) {
        let b = self.rules.bucket_of(t);
        let min_events = self.rules.min_events as i64;
        let m = self.meters.entry(key).or_default();
        let (before, after) = m.add(b, usage, min_events);
        if before.reported() && after.reported() {
            m.touched.push(b);
        } else {
            m.flipped.push(b);
        }
        (before, after)
    }

    /// Moves to watermark `w`: judges the buckets that changed or closed, forgets what is final,
    /// and pushes the changed verdicts as (anomaly, +1 / -1).
    pub fn advance(&mut self, w: EventTime, out: &mut Vec<(Anomaly, isize)>) {
        let closed = self.closed_before(w).max(self.closed_upto);
        let final_before = closed.saturating_sub(self.final_lag);
        let forget = closed.saturating_sub(self.data_lag);
        // Usage accepted since the last call is at most the dedup horizon behind the watermark
        // of then, and every bucket its verdicts look at is still held.
        let changeable = self.closed_upto.saturating_sub(self.final_lag);
        let fresh_start = self.closed_upto == i64::MIN;
        let min_volume = &self.min_volume;
        let rules = &self.rules;
        let min_events = rules.min_events as i64;
        let (reach, n) = (rules.reach(), rules.silent_after as i64);
        // A verdict looks at its own bucket, the baseline's days and weeks before it, and the
        // `silent_after` buckets before each of those.
        let (day, week) = (rules.buckets_per_day(), 7 * rules.buckets_per_day());
        let offsets: Vec<i64> = std::iter::once(0)
            .chain((1..=14).map(|k| k * day))
            .chain((1..=rules.weeks as i64).map(|k| k * week))
            .collect();
        for (&key, m) in self.meters.iter_mut() {
            let last_data = m.buckets.last();
            // Buckets that close now (from the first one on, after a fresh start: the watermark
            // may have jumped far ahead of the usage).
            let first_closing = if fresh_start {
                m.buckets.first()
            } else {
                Some(self.closed_upto)
            }
            .filter(|&f| f < closed);
            let last_verdict = m.verdicts.keys().next_back().copied();
            let upto = closed
                .max(last_data.map_or(i64::MIN, |d| d + 1))
                .max(last_verdict.map_or(i64::MIN, |v| v + 1));
            // The buckets whose verdict may have changed, as intervals.
            let mut spans: Vec<(i64, i64)> = Vec::new();
            let mut span = |from: i64, to: i64| {
                let (from, to) = (from.max(changeable), to.min(upto));
                if from < to {
                    spans.push((from, to));
                }
            };
            if let Some(c) = first_closing {
                span(c, closed);
            }
            for c in std::mem::take(&mut m.flipped) {
                span(c, c.saturating_add(reach + n + 1));
            }
            for c in std::mem::take(&mut m.touched) {
                for o in offsets.iter() {
                    span(c + o, c + o + n + 1);
                }
            }
            if spans.is_empty() {
                continue;
            }
            spans.sort_unstable();
            if !m.judgeable(min_events) {
                // No baseline anywhere: every verdict in the spans is "none", so only the ones
                // held there are withdrawn.
                for (from, to) in spans {
                    let held: Vec<i64> = m.verdicts.range(from..to).map(|(&h, _)| h).collect();
                    for h in held {
                        if let Some(old) = m.verdicts.remove(&h) {
                            out.push((old, -1));
                        }
                    }
                }
                continue;
            }
            let mut judge_at: Vec<i64> = Vec::new();
            let mut next = i64::MIN;
            for (from, to) in spans {
                judge_at.extend(from.max(next)..to);
                next = next.max(to);
            }
            let judge = Judge {
                rules,
                min_volume: min_volume[key.1.ix()],
                meter: m,
            };
            let fresh: Vec<(i64, Option<Anomaly>)> = judge_at
                .into_iter()
                .map(|h| (h, judge.verdict(key, h, h < closed)))
                .collect();
            for (h, v) in fresh {
                let old = match &v {
                    Some(a) => m.verdicts.insert(h, a.clone()),
                    None => m.verdicts.remove(&h),
                };
                if old != v {
                    if let Some(o) = old {
                        out.push((o, -1));
                    }
                    if let Some(a) = v {
                        out.push((a, 1));
                    }
                }
            }
        }
        self.closed_upto = closed;
        self.meters.retain(|_, m| {
            m.forget_before(forget, min_events);
            while m
                .verdicts
                .first_key_value()
                .is_some_and(|(&b, _)| b < final_before)
            {
                m.verdicts.pop_first();
            }
            !m.buckets.is_empty() || !m.verdicts.is_empty()
        });
    }
}

struct Judge<'a> {
    rules: &'a AnomalyRules,
    min_volume: Quantity,
    meter: &'a Meter,
}

impl Judge<'_> {
    /// The verdict of bucket `h`.
    fn verdict(&self, key: MeterKey, h: i64, closed: bool) -> Option<Anomaly> {
        let now = self.meter.at(h);
        if now.reported() {
            let x = self.expectation(h)?;
            let (expected, baseline) = (x.expected, x.baseline);
            let score = x.score(now.quantity);
            let t = self.rules.threshold;
            let kind = if score >= t && now.quantity >= self.min_volume {
                AnomalyKind::Spike
            } else if closed && score <= -t && expected >= self.min_volume {
                AnomalyKind::Drop
            } else {
                return None;
            };
            let severity = if score.abs() >= 2.0 * t {
                Severity::Critical
            } else {
                Severity::Warning
            };
            return Some(Anomaly {
                customer: key.0,
                sku: key.1,
                kind,
                start: self.rules.start_of(h),
                end: self.rules.start_of(h + 1),
                observed: now.quantity,
                expected,
                score_centi: (score * 100.0).round() as i64,
                severity,
                baseline,
            });
        }
        if !closed {
            return None;
        }
        let n = self.rules.silent_after as i64;
        let (expected, baseline) = self.silent_at(h, n)?;
        // One anomaly per silence: at its first bucket that qualifies.
        if self.silent_at(h - 1, n).is_some() {
            return None;
        }
        Some(Anomaly {
            customer: key.0,
            sku: key.1,
            kind: AnomalyKind::Silent,
            start: self.rules.start_of(h - n + 1),
            end: self.rules.start_of(h + 1),
            observed: Quantity::ZERO,
            expected,
            score_centi: 0,
            severity: Severity::Critical,
            baseline,
        })
    }

    /// Whether the `n` buckets up to `e` are a silence: none reported, each expecting at least
    /// `min_volume`; with what they expected in all.
    fn silent_at(&self, e: i64, n: i64) -> Option<(Quantity, Baseline)> {
        // Cheap test first: most buckets are not the end of `n` empty ones.
        if self.meter.buckets.first_within(e - n + 1, e).is_some() {
            return None;
        }
        let mut expected = Quantity::ZERO;
        let mut basis = None;
        for b in (e - n + 1..=e).rev() {
            let x = self.expectation(b)?;
            if x.expected < self.min_volume {
                return None;
            }
            expected += x.expected;
            basis.get_or_insert(x.baseline);
        }
        Some((expected, basis?))
    }

    /// The expectation of bucket `h`, or `None` without enough known history.
    fn expectation(&self, h: i64) -> Option<Expectation> {
        let per_day = self.rules.buckets_per_day();
        let week = 7 * per_day;
        // Known from the first reported bucket within reach; `h` itself counts.
        let reach_from = h - self.rules.reach();
        // Only reported buckets are held.
        let first = self.meter.buckets.first_within(reach_from, h)?;
        let known = |b: i64| b >= first;
        // At most 8 weeks or 5 days: fixed arrays, no allocation (this runs for every meter
        // and bucket).
        let mut refs = [Bucket::default(); 8];
        let mut n = 0;
        for k in 1..=self.rules.weeks.min(8) as i64 {
            let b = h - k * week;
            if known(b) {
                refs[n] = self.meter.at(b);
                n += 1;
            }
        }
        let baseline = if n >= 3 {
            Baseline::Weekly(n as u8)
        } else {
            let weekend = is_weekend(self.rules.start_of(h));
            n = 0;
            for k in 1..=14 {
                let b = h - k * per_day;
                if n < 5 && known(b) && is_weekend(self.rules.start_of(b)) == weekend {
                    refs[n] = self.meter.at(b);
                    n += 1;
                }
            }
            if n < 3 {
                return None;
            }
            Baseline::Daily(n as u8)
        };
        let refs = &refs[..n];
        // Too few events at this time of day or week are noise, not a baseline: the meter
        // must usually report `min_events` per bucket then.
        let mut events = [0i128; 8];
        let mut quantities = [0i128; 8];
        for (i, r) in refs.iter().enumerate() {
            events[i] = r.events as i128;
            quantities[i] = r.quantity.0;
        }
        if median(&mut events[..n]) < self.rules.min_events as i128 {
            return None;
        }
        // Scores are on a log scale: usage varies by ratios (a busy hour is busy by a factor),
        // so a spike to 3× and a drop to ⅓ score alike.
        let c = (self.min_volume.0 as f64 / 10.0).max(Quantity::SCALE_ONE as f64);
        let mut logs = [0f64; 8];
        for i in 0..n {
            logs[i] = (quantities[i].max(0) as f64 + c).ln();
        }
        let expected = median(&mut quantities[..n]);
        let center = median_f64(&mut logs[..n]);
        let mut dev = [0f64; 8];
        for i in 0..n {
            dev[i] = (logs[i] - center).abs();
        }
        let spread = 1.4826 * median_f64(&mut dev[..n]);
        let scale = spread.max((1.0 + self.rules.relative_floor).ln()).max(1e-9);
        Some(Expectation {
            expected: Quantity(expected),
            center,
            scale,
            c,
            baseline,
        })
    }
}

struct Expectation {
    expected: Quantity,
    /// Median of the baseline on the log scale.
    center: f64,
    scale: f64,
    /// Added before taking logs, so tiny values do not score wildly.
    c: f64,
    baseline: Baseline,
}

impl Expectation {
    fn score(&self, observed: Quantity) -> f64 {
        ((observed.0.max(0) as f64 + self.c).ln() - self.center) / self.scale
    }
}

fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median; the lower middle of an even count rounded toward the upper (exact, integer).
fn median(v: &mut [i128]) -> i128 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]).div_euclid(2)
    }
}

/// Saturday or Sunday (UTC).
fn is_weekend(t: EventTime) -> bool {
    // 1970-01-01 was a Thursday.
    let weekday = (t.0.div_euclid(DAY_MS) + 4).rem_euclid(7);
    weekday == 0 || weekday == 6
}

#[cfg(test)]
mod tests;
