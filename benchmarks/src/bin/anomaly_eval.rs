//! How well meterflow's anomaly detection finds what it should, and only that: generates hourly
//! usage for many meters with realistic seasonality (a daily curve in each customer's time zone,
//! quieter weekends, growth, multiplicative and counting noise, a few tiny meters), injects known
//! spikes, drops and silences, runs the detector that `meterflow run` runs (the same
//! `Detector`, fed bucket by bucket as the watermark advances), and reports precision and recall.
//!
//! usage: anomaly_eval [--meters N] [--weeks W] [--injections K] [--seed S] [--late-percent P]
//!
//! A detection is correct when it overlaps an injected window of the same meter with a matching
//! kind (a drop and a silence count for each other: both mean usage went missing). Recall counts
//! the injections the rules promise to catch: those whose usage reaches `min_volume` (a spike's
//! peak, or what a drop or silence takes away per hour). Injections below it are reported apart.

use std::collections::BTreeMap;
use std::time::Instant;

use meterflow_schemas::anomaly::{Anomaly, AnomalyKind, AnomalyRules, Bucket, Detector};
use meterflow_schemas::catalog::{CustomerIdx, SkuIdx};
use meterflow_schemas::fixtures::catalog;
use meterflow_schemas::money::Quantity;
use meterflow_schemas::time::{EventTime, Span};

const H: i64 = 3_600_000;

/// splitmix64: small, fast, and the same numbers everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

struct Meter {
    level: f64,
    /// Hour of the daily peak (UTC), from the customer's time zone.
    peak_hour: f64,
    /// How pronounced the daily curve is (0: flat).
    daily_depth: f64,
    weekend: f64,
    growth_per_week: f64,
    noise: f64,
    /// Units per event.
    event_size: f64,
}

impl Meter {
    fn clean(&self, hour: i64) -> f64 {
        let h = (hour % 24) as f64;
        let d = ((h - self.peak_hour + 36.0) % 24.0) - 12.0;
        let curve = 1.0 - self.daily_depth + self.daily_depth * (-(d * d) / 18.0).exp();
        let day = (hour / 24) % 7; // hour 0 is a Monday
        let weekend = if day == 5 || day == 6 {
            self.weekend
        } else {
            1.0
        };
        let weeks = hour as f64 / (24.0 * 7.0);
        self.level * curve * weekend * (1.0 + self.growth_per_week).powf(weeks)
    }
}

#[derive(Clone, Copy, Debug)]
struct Injection {
    meter: usize,
    kind: AnomalyKind,
    from: i64,
    hours: i64,
    factor: f64,
    /// Within what the rules promise to catch.
    eligible: bool,
}

struct Args {
    meters: usize,
    weeks: i64,
    injections: usize,
    seed: u64,
    late_percent: u64,
}

fn args() -> Args {
    let mut a = Args {
        meters: 400,
        weeks: 8,
        injections: 200,
        seed: 7,
        late_percent: 5,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = || v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--meters" => a.meters = next().parse().expect("--meters N"),
            "--weeks" => a.weeks = next().parse().expect("--weeks W"),
            "--injections" => a.injections = next().parse().expect("--injections K"),
            "--seed" => a.seed = next().parse().expect("--seed S"),
            "--late-percent" => a.late_percent = next().parse().expect("--late-percent P"),
            other => {
                panic!("unknown argument {other}; see the usage at the top of anomaly_eval.rs")
            }
        }
        i += 2;
    }
    a
}

fn main() {
    meterflow_benchmarks::help_from_header(include_str!("anomaly_eval.rs"));
    let a = args();
    let rules = AnomalyRules::default();
    let min_volume = rules.min_volume.0 as f64 / Quantity::SCALE_ONE as f64;
    let mut rng = Rng(a.seed);
    let meters: Vec<Meter> = (0..a.meters)
        .map(|i| {
            // Log-uniform levels from 5 to 50 000 per hour: some meters are too small to page for.
            let level = 10f64.powf(rng.range(0.7, 4.7));
            Meter {
                level,
                peak_hour: rng.range(0.0, 24.0),
                daily_depth: if i % 7 == 0 { 0.1 } else { rng.range(0.4, 0.9) },
                weekend: rng.range(0.25, 1.0),
                growth_per_week: rng.range(-0.01, 0.04),
                noise: rng.range(0.05, 0.2),
                event_size: 10f64.powf(rng.range(0.0, 1.0)),
            }
        })
        .collect();
    let hours = a.weeks * 7 * 24;
    // Injections after four weeks of history, spread over the rest.
    let warmup = 4 * 7 * 24;
    let mut injections: Vec<Injection> = Vec::new();
    while injections.len() < a.injections {
        let meter = rng.below(a.meters as u64) as usize;
        let kind = AnomalyKind::ALL[rng.below(3) as usize];
        let (hours_long, factor) = match kind {
            AnomalyKind::Spike => (1 + rng.below(3) as i64, rng.range(2.5, 10.0)),
            AnomalyKind::Drop => (1 + rng.below(4) as i64, rng.range(0.05, 0.35)),
            AnomalyKind::Silent => (4 + rng.below(9) as i64, 0.0),
            AnomalyKind::Cost => unreachable!("only usage anomalies are injected"),
        };
        let from = warmup + rng.below((hours - warmup - 24) as u64) as i64;
        // One injection per meter and week at most, so ground truth stays unambiguous.
        let clash = injections
            .iter()
            .any(|j| j.meter == meter && (j.from - from).abs() < 7 * 24);
        if clash {
            continue;
        }
        let m = &meters[meter];
        let peak = (from..from + hours_long)
            .map(|h| m.clean(h))
            .fold(0.0, f64::max);
        let eligible = match kind {
            AnomalyKind::Spike => peak * factor >= min_volume,
            // Silence is judged once `silent_after` hours in a row expect min_volume each.
            AnomalyKind::Silent => {
                (from..from + hours_long)
                    .map(|h| m.clean(h) >= 1.3 * min_volume)
                    .fold((0, 0), |(run, best), ok| {
                        let run = if ok { run + 1 } else { 0 };
                        (run, best.max(run))
                    })
                    .1
                    >= rules.silent_after as i64
            }
            AnomalyKind::Drop => peak * (1.0 - factor) >= min_volume && peak >= 1.3 * min_volume,
            AnomalyKind::Cost => false,
        };
        injections.push(Injection {
            meter,
            kind,
            from,
            hours: hours_long,
            factor,
            eligible,
        });
    }
    let mut effect: BTreeMap<(usize, i64), f64> = BTreeMap::new();
    for j in &injections {
        for h in j.from..j.from + j.hours {
            effect.insert((j.meter, h), j.factor);
        }
    }

    let c = catalog();
    let mut detector = Detector::new(rules.clone(), Span::days(7), &c);
    let monday = EventTime::from_civil(2026, 1, 5).0;
    let key = |m: usize| (CustomerIdx(m as u32), SkuIdx(0));
    let mut verdicts: BTreeMap<Anomaly, isize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut late: Vec<(usize, i64, Quantity, i64)> = Vec::new();
    let started = Instant::now();
    let mut evaluated_hours = 0u64;
    for hour in 0..hours {
        for (i, m) in meters.iter().enumerate() {
            let mean = m.clean(hour) * (m.noise * rng.normal()).exp();
            // Counting noise on top: usage is a count of things.
            let counted = (mean + mean.sqrt() * rng.normal()).max(0.0);
            let units = counted * effect.get(&(i, hour)).copied().unwrap_or(1.0);
            let q = Quantity((units * 1e3).round() as i128 * 1_000_000);
            if q.0 <= 0 {
                continue;
            }
            let events = ((units / m.event_size).round() as i64).max(1);
            // Some usage arrives an hour late (a retrying producer): the verdicts must not care.
            if rng.below(100) < a.late_percent {
                late.push((i, hour, q, events));
                continue;
            }
            detector.add(key(i), EventTime(monday + hour * H + 1), bucket(q, events));
        }
        let (arriving, waiting): (Vec<_>, Vec<_>) =
            late.drain(..).partition(|&(_, h, _, _)| h < hour);
        late = waiting;
        for (i, h, q, e) in arriving {
            detector.add(key(i), EventTime(monday + h * H + 1), bucket(q, e));
        }
        detector.advance(EventTime(monday + (hour + 1) * H - 1), &mut out);
        evaluated_hours += meters.len() as u64;
        for (anomaly, n) in out.drain(..) {
            *verdicts.entry(anomaly).or_default() += n;
        }
    }
    for (i, h, q, e) in std::mem::take(&mut late) {
        detector.add(key(i), EventTime(monday + h * H + 1), bucket(q, e));
    }
    detector.advance(EventTime(monday + hours * H), &mut out);
    for (anomaly, n) in out.drain(..) {
        *verdicts.entry(anomaly).or_default() += n;
    }
    let elapsed = started.elapsed();
    verdicts.retain(|_, n| *n != 0);
    let detected: Vec<&Anomaly> = verdicts.keys().collect();

    let hour_of = |t: EventTime| (t.0 - monday).div_euclid(H);
    let compatible = |k: AnomalyKind, j: AnomalyKind| {
        k == j || (k != AnomalyKind::Spike && j != AnomalyKind::Spike)
    };
    let overlaps = |d: &Anomaly, j: &Injection| {
        d.customer.0 as usize == j.meter
            && compatible(d.kind, j.kind)
            && hour_of(d.start) < j.from + j.hours
            && hour_of(d.end) > j.from
    };
    let mut per_kind: BTreeMap<&str, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut true_positives = 0;
    for d in &detected {
        let hit = injections.iter().any(|j| overlaps(d, j));
        if hit {
            true_positives += 1;
        }
        let e = per_kind.entry(d.kind.as_str()).or_default();
        e.0 += 1;
        e.1 += hit as usize;
    }
    let (mut eligible, mut found, mut below, mut found_below) = (0, 0, 0, 0);
    let mut missed: Vec<&Injection> = Vec::new();
    for j in &injections {
        let hit = detected.iter().any(|d| overlaps(d, j));
        let e = per_kind.entry(j.kind.as_str()).or_default();
        if j.eligible {
            eligible += 1;
            found += hit as usize;
            e.2 += 1;
            e.3 += hit as usize;
            if !hit {
                missed.push(j);
            }
        } else {
            below += 1;
            found_below += hit as usize;
        }
    }
    let precision = ratio(true_positives, detected.len());
    let recall = ratio(found, eligible);
    println!(
        "anomaly_eval: {} meters × {} weeks hourly ({} buckets), {} injections, seed {}, {}% of usage an hour late",
        a.meters,
        a.weeks,
        a.meters as i64 * hours,
        a.injections,
        a.seed,
        a.late_percent
    );
    println!(
        "rules: threshold {}, relative_floor {}, min_volume {}, min_events {}, silent_after {}, weeks {}",
        rules.threshold, rules.relative_floor, rules.min_volume, rules.min_events, rules.silent_after, rules.weeks
    );
    println!("kind     detected  correct  injected(eligible)  found");
    for (kind, (d, ok, inj, f)) in &per_kind {
        println!("{kind:<8} {d:>8}  {ok:>7}  {inj:>18}  {f:>5}");
    }
    println!(
        "precision {precision:.3} ({true_positives}/{})  recall {recall:.3} ({found}/{eligible})",
        detected.len()
    );
    println!("below min_volume: {below} injections, {found_below} found anyway (not counted)");
    println!(
        "detector: {:.0} meter-hours/s ({} meter-hours in {:.2} s)",
        evaluated_hours as f64 / elapsed.as_secs_f64(),
        evaluated_hours,
        elapsed.as_secs_f64()
    );
    for j in missed.iter().take(10) {
        let m = &meters[j.meter];
        println!(
            "missed: meter {} {:?} from hour {} for {} h, factor {:.2}, level {:.0}, clean at start {:.0}",
            j.meter,
            j.kind,
            j.from,
            j.hours,
            j.factor,
            m.level,
            m.clean(j.from)
        );
    }
    let wrong: Vec<&&Anomaly> = detected
        .iter()
        .filter(|d| !injections.iter().any(|j| overlaps(d, j)))
        .take(10)
        .collect();
    for d in wrong {
        println!(
            "false: meter {} {:?} hour {} observed {} expected {} score {}",
            d.customer.0,
            d.kind,
            hour_of(d.start),
            d.observed,
            d.expected,
            d.score()
        );
    }
}

fn bucket(q: Quantity, events: i64) -> Bucket {
    Bucket {
        events,
        quantity: q,
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}
