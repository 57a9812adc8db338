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

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CustomerIdx, SkuIdx};
use crate::hashing::FxHashMap;
use crate::money::{Amount, Quantity};
use crate::time::{EventTime, Span};

const DAY_MS: i64 = 86_400_000;

/// The `[anomalies]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyRules {
    /// Off: no usage buckets and no anomalies are computed.
    pub enabled: bool,
    /// Bucket length; must divide a day (5m, 15m, 1h, 2h, ...).
    pub bucket: Span,
    /// Weeks of history in the weekly baseline (1 to 8).
    pub weeks: u32,
    /// Robust score (in spreads) at which a spike or drop is reported.
    pub threshold: f64,
    /// The smallest relative deviation that counts: the score's scale is at least this fraction
    /// of the expected value.
    pub relative_floor: f64,
    /// Usage per bucket below which nobody is paged: a spike must reach it, a drop or a silence
    /// must expect it.
    #[serde(with = "quantity_text")]
    pub min_volume: Quantity,
    /// `min_volume` for particular SKUs, by SKU id.
    #[serde(with = "quantity_map")]
    pub min_volume_by_sku: BTreeMap<String, Quantity>,
    /// Buckets in a row without events that make a silent meter.
    pub silent_after: u32,
    /// Events per bucket the baseline must usually hold (its median): a meter with fewer at that
    /// time of day is too sparse to judge bucket by bucket (use a longer bucket for it).
    pub min_events: u32,
    /// Cost anomalies: the gross margin (percent of what usage bills) below which a customer's
    /// SKU in a period is reported, where the rate card gives a `unit_cost`.
    pub min_margin_percent: u8,
    /// Cost (in the rate card's currency) below which a low margin pages nobody.
    #[serde(with = "quantity_text")]
    pub min_cost: Quantity,
}

impl Default for AnomalyRules {
    fn default() -> Self {
        AnomalyRules {
            enabled: true,
            bucket: Span::hours(1),
            weeks: 4,
            threshold: 6.0,
            relative_floor: 0.15,
            min_volume: Quantity::from_units(100),
            min_volume_by_sku: BTreeMap::new(),
            silent_after: 3,
            min_events: 5,
            min_margin_percent: 20,
            min_cost: Quantity::from_units(10),
        }
    }
}

impl AnomalyRules {
    /// The first problem with the rules, as (key, fix).
    pub fn check(&self) -> Result<(), (String, String)> {
        let b = self.bucket.millis();
        if b < 60_000 || DAY_MS % b != 0 {
            return Err((
                format!("anomalies.bucket: `{}` does not divide a day into whole buckets of at least a minute", self.bucket),
                "use a bucket such as 5m, 15m, 30m, 1h, 2h, 6h or 1d".into(),
            ));
        }
        if !(1..=8).contains(&self.weeks) {
            return Err((
                format!("anomalies.weeks: {} is out of range", self.weeks),
                "use 1 to 8 weeks of weekly baseline".into(),
            ));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err((
                format!(
                    "anomalies.threshold: {} is not a positive score",
                    self.threshold
                ),
                "use a robust score such as 6".into(),
            ));
        }
        if !(self.relative_floor.is_finite() && self.relative_floor >= 0.0) {
            return Err((
                format!(
                    "anomalies.relative_floor: {} is not a fraction",
                    self.relative_floor
                ),
                "use a fraction of the expected value such as 0.15".into(),
            ));
        }
        if self.silent_after == 0 {
            return Err((
                "anomalies.silent_after: 0 buckets".into(),
                "use 1 or more buckets in a row without events".into(),
            ));
        }
        if self.min_margin_percent > 100 {
            return Err((
                format!(
                    "anomalies.min_margin_percent: {} is over 100",
                    self.min_margin_percent
                ),
                "use a gross-margin floor from 0 to 100 percent".into(),
            ));
        }
        if self.min_volume.is_negative() {
            return Err((
                "anomalies.min_volume: negative".into(),
                "use a quantity of 0 or more".into(),
            ));
        }
        Ok(())
    }

    fn buckets_per_day(&self) -> i64 {
        DAY_MS / self.bucket.millis()
    }

    /// How far back (in buckets) a verdict looks.
    pub fn reach(&self) -> i64 {
        self.buckets_per_day() * 7 * self.weeks.max(2) as i64 + self.silent_after as i64
    }

    /// The bucket holding `t`.
    pub fn bucket_of(&self, t: EventTime) -> i64 {
        t.0.div_euclid(self.bucket.millis())
    }

    pub fn start_of(&self, bucket: i64) -> EventTime {
        EventTime(bucket * self.bucket.millis())
    }

    fn min_volume_for(&self, catalog: &Catalog, sku: SkuIdx) -> Quantity {
        let id = &catalog.skus[sku.ix()].id;
        self.min_volume_by_sku
            .get(id.as_ref() as &str)
            .copied()
            .unwrap_or(self.min_volume)
    }
}

mod quantity_text {
    use super::Quantity;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(q: &Quantity, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(q)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
        let text = String::deserialize(d)?;
        Quantity::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a quantity ({e}); write it as a string such as \"100\" or \"2.5\""
            ))
        })
    }
}

mod quantity_map {
    use std::collections::BTreeMap;

    use super::Quantity;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Quantity>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &v.to_string())?;
        }
        map.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Quantity>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                Quantity::parse(&v).map(|q| (k.clone(), q)).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{k} = `{v}` is not a quantity ({e}); write it as a string such as \"100\""
                    ))
                })
            })
            .collect()
    }
}

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

/// Usage of one meter in one bucket.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Bucket {
    pub events: i64,
    pub quantity: Quantity,
}

impl Bucket {
    fn reported(&self) -> bool {
        self.events != 0 || self.quantity != Quantity::ZERO
    }
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
    buckets: BTreeMap<i64, Bucket>,
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
        self.buckets.get(&b).copied().unwrap_or_default()
    }

    /// Adds `usage` to bucket `b`, keeping `dense` (`min_events` from the rules); returns the
    /// bucket before and after.
    fn add(&mut self, b: i64, usage: Bucket, min_events: i64) -> (Bucket, Bucket) {
        let (before, after) = match self.buckets.entry(b) {
            Entry::Vacant(slot) => {
                if usage.reported() {
                    slot.insert(usage);
                }
                (Bucket::default(), usage)
            }
            Entry::Occupied(mut slot) => {
                let before = *slot.get();
                let after = Bucket {
                    events: before.events + usage.events,
                    quantity: before.quantity + usage.quantity,
                };
                if after.reported() {
                    *slot.get_mut() = after;
                } else {
                    slot.remove();
                }
                (before, after)
            }
        };
        let dense = |u: Bucket| u.reported() && u.events >= min_events;
        self.dense = self.dense + dense(after) as u32 - dense(before) as u32;
        (before, after)
    }

    /// Forgets the buckets before `b`.
    fn forget_before(&mut self, b: i64, min_events: i64) {
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= b {
                break;
            }
            let usage = entry.remove();
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
            for (&b, &usage) in &m.buckets {
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
            let last_data = m.buckets.keys().next_back().copied();
            // Buckets that close now (from the first one on, after a fresh start: the watermark
            // may have jumped far ahead of the usage).
            let first_closing = if fresh_start {
                m.buckets.keys().next().copied()
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
        if self.meter.buckets.range(e - n + 1..=e).next().is_some() {
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
        let first = self
            .meter
            .buckets
            .range(reach_from..=h)
            .find(|(_, b)| b.reported())
            .map(|(&b, _)| b)?;
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
mod tests {
    use super::*;
    use crate::fixtures::catalog as demo_catalog;

    const H: i64 = 3_600_000;

    fn rules() -> AnomalyRules {
        AnomalyRules {
            min_volume: Quantity::from_units(10),
            ..AnomalyRules::default()
        }
    }

    /// A meter with a daily shape, weekends at half, for `days` days from a Monday.
    fn feed(d: &mut Detector, key: MeterKey, days: i64, shape: impl Fn(i64) -> i64) {
        let monday = EventTime::from_civil(2026, 10, 5).0;
        for hour in 0..days * 24 {
            let units = shape(hour);
            if units > 0 {
                d.add(
                    key,
                    EventTime(monday + hour * H),
                    Bucket {
                        events: (units + 9) / 10,
                        quantity: Quantity::from_units(units),
                    },
                );
            }
        }
    }

    fn normal(hour: i64) -> i64 {
        let h = hour % 24;
        let day = hour / 24 % 7;
        let base = if (8..20).contains(&h) { 1000 } else { 200 };
        let wiggle = (hour * 7919 % 13) * 5;
        if day >= 5 {
            base / 2 + wiggle
        } else {
            base + wiggle
        }
    }

    fn detector() -> (Detector, MeterKey) {
        let c = demo_catalog();
        let key = (CustomerIdx(0), SkuIdx(0));
        (Detector::new(rules(), Span::days(7), &c), key)
    }

    fn run(shape: impl Fn(i64) -> i64, days: i64) -> Vec<(Anomaly, isize)> {
        let (mut d, key) = detector();
        feed(&mut d, key, days, shape);
        let monday = EventTime::from_civil(2026, 10, 5).0;
        let mut out = Vec::new();
        d.advance(EventTime(monday + days * 24 * H), &mut out);
        out
    }

    #[test]
    fn a_regular_meter_has_no_anomalies() {
        assert!(run(normal, 35).is_empty());
    }

    #[test]
    fn a_spike_on_a_tuesday_afternoon_is_found_against_previous_tuesdays() {
        // Day 29 is a Tuesday (day 0 is a Monday).
        let at = 29 * 24 + 14;
        let out = run(|h| if h == at { normal(h) * 10 } else { normal(h) }, 35);
        assert_eq!(out.len(), 1, "{out:?}");
        let (a, n) = &out[0];
        assert_eq!((a.kind, *n), (AnomalyKind::Spike, 1));
        assert_eq!(a.baseline, Baseline::Weekly(4));
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.observed, Quantity::from_units(normal(at) * 10));
        let text = a.explain(&demo_catalog());
        assert!(text.contains("times the"), "{text}");
    }

    #[test]
    fn a_drop_and_a_silence_are_told_apart() {
        let drop_at = 30 * 24 + 10;
        let silent = 31 * 24 + 9..31 * 24 + 14;
        let out = run(
            |h| {
                if h == drop_at {
                    normal(h) / 5
                } else if silent.contains(&h) {
                    0
                } else {
                    normal(h)
                }
            },
            35,
        );
        let kinds: Vec<_> = out.iter().map(|(a, _)| (a.kind, a.start)).collect();
        let monday = EventTime::from_civil(2026, 10, 5).0;
        assert_eq!(
            kinds,
            {
                let mut k = vec![
                    (AnomalyKind::Drop, EventTime(monday + drop_at * H)),
                    (AnomalyKind::Silent, EventTime(monday + silent.start * H)),
                ];
                k.sort();
                k
            },
            "{out:?}"
        );
        let silence = out
            .iter()
            .find(|(a, _)| a.kind == AnomalyKind::Silent)
            .unwrap();
        assert_eq!(silence.0.end.0 - silence.0.start.0, 3 * H);
    }

    #[test]
    fn a_spike_whose_baseline_thins_below_min_events_is_withdrawn() {
        let at = 29 * 24 + 14;
        let shape = |h| if h == at { normal(h) * 10 } else { normal(h) };
        let (mut d, key) = detector();
        feed(&mut d, key, 35, shape);
        let monday = EventTime::from_civil(2026, 10, 5).0;
        let w = EventTime(monday + 35 * 24 * H);
        let mut out = Vec::new();
        d.advance(w, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let spike = out[0].0.clone();
        assert_eq!((spike.kind, out[0].1), (AnomalyKind::Spike, 1));
        // Corrections take back all but one event of every bucket: the spike's baseline, like
        // every bucket of the meter, falls under `min_events`.
        for hour in 0..35 * 24 {
            let events = (shape(hour) + 9) / 10;
            d.add(
                key,
                EventTime(monday + hour * H),
                Bucket {
                    events: 1 - events,
                    quantity: Quantity::ZERO,
                },
            );
        }
        assert_eq!(d.meters[&key].dense, 0);
        out.clear();
        d.advance(w, &mut out);
        assert_eq!(out, vec![(spike, -1)], "the verdict is withdrawn");
        // A meter that never holds `min_events` in a bucket finds nothing, however it moves.
        let (mut d, key) = detector();
        feed(&mut d, key, 35, |h| if h == at { 20 } else { 10 });
        out.clear();
        d.advance(w, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn weekends_are_judged_against_weekends() {
        // Under three weeks of history: a Saturday at weekday volume is a spike against recent
        // weekend days, a Monday at weekday volume is not.
        let sat = 19 * 24 + 12;
        let mon = 15 * 24 + 12;
        let out = run(
            |h| {
                if h == sat {
                    2000
                } else if h == mon {
                    1040
                } else {
                    normal(h)
                }
            },
            20,
        );
        let monday = EventTime::from_civil(2026, 10, 5).0;
        let found: Vec<_> = out.iter().map(|(a, _)| (a.kind, a.start)).collect();
        assert_eq!(
            found,
            vec![(AnomalyKind::Spike, EventTime(monday + sat * H))]
        );
        assert!(matches!(out[0].0.baseline, Baseline::Daily(_)));
    }

    #[test]
    fn a_new_meter_and_a_tiny_meter_never_page() {
        assert!(run(|h| if h == 30 { 50_000 } else { normal(h) }, 2).is_empty());
        assert!(run(|h| if h % 24 == 3 { 8 } else { 1 }, 35).is_empty());
    }

    #[test]
    fn a_late_correction_retracts_its_spike() {
        let (mut d, key) = detector();
        let at = 29 * 24 + 14;
        feed(&mut d, key, 35, |h| {
            if h == at {
                normal(h) * 5
            } else {
                normal(h)
            }
        });
        let monday = EventTime::from_civil(2026, 10, 5).0;
        let end = EventTime(monday + 35 * 24 * H);
        let mut out = Vec::new();
        d.advance(end, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        d.add(
            key,
            EventTime(monday + at * H),
            Bucket {
                events: 0,
                quantity: Quantity::from_units(-normal(at) * 4),
            },
        );
        d.advance(end, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1, -1);
    }

    #[test]
    fn a_spike_fires_before_its_hour_closes() {
        let (mut d, key) = detector();
        let at = 29 * 24 + 14;
        feed(&mut d, key, 29, normal);
        let monday = EventTime::from_civil(2026, 10, 5).0;
        d.add(
            key,
            EventTime(monday + at * H + 60_000),
            Bucket {
                events: 1000,
                quantity: Quantity::from_units(10_000),
            },
        );
        let mut out = Vec::new();
        // The watermark is still inside the hour.
        d.advance(EventTime(monday + at * H + 120_000), &mut out);
        let spikes: Vec<_> = out
            .iter()
            .filter(|(a, _)| a.kind == AnomalyKind::Spike)
            .collect();
        assert_eq!(spikes.len(), 1, "{out:?}");
    }

    #[test]
    fn verdicts_do_not_depend_on_how_often_the_watermark_moves() {
        // Also anomalies weeks before the end: a first watermark far ahead of the usage (a
        // backlog read at once) must still judge them.
        let shape = |h: i64| match h {
            h if h == 15 * 24 + 13 => 9000,
            h if (16 * 24 + 9..16 * 24 + 13).contains(&h) => 0,
            h if h == 29 * 24 + 14 => 9000,
            h if (30 * 24 + 2..30 * 24 + 20).contains(&h) => 0,
            h if h == 31 * 24 + 11 => 50,
            h => normal(h),
        };
        let all_at_once = run(shape, 35);
        let (mut d, key) = detector();
        let monday = EventTime::from_civil(2026, 10, 5).0;
        let mut stepped: BTreeMap<Anomaly, isize> = BTreeMap::new();
        let mut out = Vec::new();
        for hour in 0..35 * 24 {
            let units = shape(hour);
            if units > 0 {
                d.add(
                    key,
                    EventTime(monday + hour * H + 1),
                    Bucket {
                        events: (units + 9) / 10,
                        quantity: Quantity::from_units(units),
                    },
                );
            }
            if hour % 5 == 0 {
                d.advance(EventTime(monday + hour * H), &mut out);
            }
        }
        d.advance(EventTime(monday + 35 * 24 * H), &mut out);
        for (a, n) in out {
            *stepped.entry(a).or_default() += n;
        }
        stepped.retain(|_, n| *n != 0);
        let once: BTreeMap<Anomaly, isize> = all_at_once.into_iter().collect();
        assert_eq!(stepped, once);
        assert_eq!(once.len(), 5, "{once:?}");
    }

    #[test]
    fn bad_rules_name_their_key() {
        let r = AnomalyRules {
            bucket: Span::minutes(7),
            ..AnomalyRules::default()
        };
        assert!(r.check().unwrap_err().0.starts_with("anomalies.bucket"));
        assert!(AnomalyRules::default().check().is_ok());
    }
}
