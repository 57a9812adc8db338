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
