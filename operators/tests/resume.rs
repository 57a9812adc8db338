//! Exactly once across a restart, without infrastructure: run the whole input once; then, for
//! several committed points, rebuild the state a restarted pipeline would load from its tables,
//! run again from there, and check the tables end up exactly as after the uninterrupted run.

use std::collections::BTreeMap;

use meterflow_operators::aggregate::UsageSum;
use meterflow_operators::anomalies::AnomalySeed;
use meterflow_operators::dataflow::Plan;
use meterflow_operators::dataflow::Resume;
use meterflow_operators::dedup::{DedupSeed, Deduplicator};
use meterflow_operators::entitlements::{has_spend_plan, Reported};
use meterflow_operators::meters::{reloads_readings, Reading};
use meterflow_operators::progress::Progress;
use meterflow_operators::testing::{consolidate, plan, run, run_resumed, Held, RunOutput};
use meterflow_operators::Epoch;
use meterflow_schemas::anomaly::{AnomalyKind, BucketRow, Detector};
use meterflow_schemas::catalog::{ContractIdx, CustomerIdx};
use meterflow_schemas::entitlement::reported_through;
use meterflow_schemas::event::CorrectionAction;
use meterflow_schemas::fixtures::{self, event};
use meterflow_schemas::rows::LineKey;
use meterflow_schemas::time::Period;
use meterflow_schemas::time::{EventTime, Span};

fn input() -> Vec<u8> {
    let mut lines = Vec::new();
    let skus = [
        ("api_calls", "requests"),
        ("tokens", "tokens"),
        ("storage", "GB"),
    ];
    let contracts = [("acme", "acme-2026"), ("globex", "globex-legacy")];
    // Oct 20 .. Nov 12, in order, with retries (some of events several rounds back, so they
    // straddle commits), a month end crossing and late October events.
    let mut sent = Vec::new();
    let mut readings: Vec<(String, String)> = Vec::new();
    let mut corrections: Vec<String> = Vec::new();
    for i in 0..600i64 {
        let minute = i * 55;
        let t = meterflow_schemas::time::EventTime(1_792_454_400_000 + minute * 60_000);
        let (customer, contract) = contracts[(i % 2) as usize];
        let (sku, unit) = skus[(i % 3) as usize];
        let q = format!("{}", 1 + (i * 37) % 900);
        let line = event(
            &format!("e{i}"),
            customer,
            contract,
            sku,
            unit,
            &q,
            &t.to_string(),
        );
        lines.push(line.clone());
        sent.push(line);
        if i % 9 == 0 {
            lines.push(sent[(i as usize).saturating_sub(40)].clone());
        }
        if i % 4 == 1 || i % 4 == 2 {
            // Readings of the peak, distinct-count and gauge meters.
            let id = format!("m{i}");
            let reading = match (i / 4) % 3 {
                0 => event(
                    &id,
                    customer,
                    contract,
                    "seats",
                    "seats",
                    &format!("{}", 1 + (i * 13) % 40),
                    &t.to_string(),
                ),
                1 => fixtures::with_user(
                    &event(
                        &id,
                        customer,
                        contract,
                        "active_users",
                        "users",
                        "1",
                        &t.to_string(),
                    ),
                    &format!("u{}", (i * 7) % 23),
                ),
                _ => event(
                    &id,
                    customer,
                    contract,
                    "disk",
                    "GB",
                    &format!("{}", 100 + (i * 7) % 500),
                    &t.to_string(),
                ),
            };
            lines.push(reading.clone());
            readings.push((id, reading));
        }
        if i == 380 {
            // Void a seats reading and a distinct user's reading.
            for (id, line) in readings.clone() {
                if id == "m1" || id == "m5" {
                    let q = if id == "m1" { "14" } else { "1" };
                    lines.push(fixtures::void_of(&line, &id, q, &format!("void-{id}")));
                }
            }
        }
        if i == 450 {
            // October usage arriving in November: adjustments.
            lines.push(event(
                "late-1",
                "acme",
                "acme-2026",
                "tokens",
                "tokens",
                "700",
                "2026-10-31T20:00:00Z",
            ));
            lines.push(event(
                "late-2",
                "globex",
                "globex-legacy",
                "storage",
                "GB",
                "55",
                "2026-10-31T21:00:00Z",
            ));
            // A late peak, a late new user and a late but earlier gauge reading.
            lines.push(event(
                "late-3",
                "acme",
                "acme-2026",
                "seats",
                "seats",
                "77",
                "2026-10-31T22:00:00Z",
            ));
            lines.push(fixtures::with_user(
                &event(
                    "late-4",
                    "globex",
                    "globex-legacy",
                    "active_users",
                    "users",
                    "1",
                    "2026-10-31T22:30:00Z",
                ),
                "late-user",
            ));
            lines.push(event(
                "late-5",
                "acme",
                "acme-2026",
                "disk",
                "GB",
                "1",
                "2026-10-30T22:00:00Z",
            ));
        }
        if i == 150 {
            // Amend an earlier api_calls event: take back half of it.
            let original = sent[141].clone();
            let q = 1 + (141 * 37) % 900;
            let amend = fixtures::void_of(&original, "e141", &q.to_string(), "amend-141")
                .replace(
                    &format!(r#""quantity":"-{q}""#),
                    &format!(r#""quantity":"-{}""#, q / 2),
                )
                .replace(r#""action":"void""#, r#""action":"amend""#);
            lines.push(amend.clone());
            corrections.push(amend);
        }
        if i == 430 || i == 590 {
            // Retries of the corrections, rounds after them (across restart points).
            lines.extend(corrections.iter().cloned());
        }
        if i == 300 {
            // Void an earlier event.
            let original = event(
                "e290",
                contracts[0].0,
                contracts[0].1,
                skus[2].0,
                skus[2].1,
                &format!("{}", 1 + (290 * 37) % 900),
                &meterflow_schemas::time::EventTime(1_792_454_400_000 + 290 * 55 * 60_000)
                    .to_string(),
            );
            let quantity = format!("{}", 1 + (290 * 37) % 900);
            let void = fixtures::void_of(&original, "e290", &quantity, "void-290");
            lines.push(void.clone());
            corrections.push(void);
        }
    }
    lines.push("{broken".into());
    lines.join("\n").into_bytes()
}

/// The state a restarted pipeline rebuilds from its tables at committed point `p`.
fn state_at(full: &RunOutput, p: &Progress, horizon_ms: i64, plan: &Plan) -> (Resume, Held) {
    let rules = &plan.anomalies;
    let through = p.epoch;
    let accepted: Vec<_> = full
        .accepted
        .iter()
        .filter(|(e, _)| *e <= through)
        .map(|(_, a)| &a.event)
        .collect();
    let voided: Vec<_> = accepted
        .iter()
        .filter_map(|e| {
            e.correction
                .as_ref()
                .filter(|c| c.action == CorrectionAction::Void)
                .map(|c| c.original_key)
        })
        .collect();
    let forget_before = p.watermark.map_or(i64::MIN, |w| w.0 - horizon_ms);
    let dedup = accepted
        .iter()
        .filter(|e| e.time.0 >= forget_before)
        .map(|e| DedupSeed {
            key: e.key,
            route: e.route(),
            fingerprint: e.fingerprint,
            time: e.time,
            voided: voided.contains(&e.key),
        })
        .collect();
    let line_usage = held_at(&full.line_usage, through);
    // Non-additive lines that can still change come back as readings, the rest as usage (see
    // `clickhouse_restore`).
    let forget = EventTime(forget_before);
    let from_readings = |key: &LineKey| {
        !plan.catalog.skus[key.sku.ix()].aggregation.is_additive()
            && reloads_readings(plan.policy.period.end_of(key.service_period), forget)
    };
    let deduper = Deduplicator::new(plan.policy, plan.catalog.clone(), Vec::new().into());
    let readings = full
        .accepted
        .iter()
        .filter(|(e, a)| *e <= through && a.event.billable())
        .filter_map(|(_, a)| {
            let d = deduper.usage_of(a);
            Reading::of(&d, plan.catalog.skus[d.line.sku.ix()].aggregation)
        })
        .filter(|(line, _, _)| from_readings(line))
        .collect();
    let usage = line_usage
        .iter()
        .filter(|(u, _, _)| !from_readings(&u.key))
        .map(|(u, n, _)| {
            (
                (u.price, (u.key, u.invoice_period)),
                UsageSum {
                    events: u.events * *n as i64,
                    quantity: meterflow_schemas::money::Quantity(u.quantity.0 * *n as i128),
                    fee_adjustment: meterflow_schemas::money::Amount(
                        u.fee_adjustment.0 * *n as i128,
                    ),
                },
            )
        })
        .collect();
    // The detectors hold buckets and verdicts from a point behind the watermark on; so does
    // what a restart loads (see `clickhouse_restore`).
    let detector = Detector::new(rules.clone(), Span(horizon_ms), &fixtures::catalog());
    let (buckets_from, verdicts_from) = detector.held_from(p.watermark.unwrap_or(EventTime::MIN));
    let usage_buckets: Vec<_> = held_at(&full.usage_buckets, through)
        .into_iter()
        .filter(|(b, _, _)| b.start >= buckets_from)
        .collect();
    let anomalies: Vec<_> = held_at(&full.anomalies, through)
        .into_iter()
        .filter(|(a, _, _)| a.kind == AnomalyKind::Cost || a.end >= verdicts_from)
        .collect();
    let resume = Resume {
        progress: Some(p.clone()),
        dedup,
        usage,
        anomalies: AnomalySeed {
            buckets: usage_buckets.iter().map(|(b, _, _)| *b).collect(),
            anomalies: anomalies.iter().map(|(a, _, _)| a.clone()).collect(),
        },
        readings,
        reported: reported_at(full, through, plan),
    };
    (
        resume,
        Held {
            invoice_lines: held_at(&full.invoice_lines, through),
            rated_usage: held_at(&full.rated_usage, through),
            line_usage,
            usage_buckets,
            anomalies,
        },
    )
}

/// How far planned contracts had reported usage after `through` (see `clickhouse_restore`).
fn reported_at(full: &RunOutput, through: Epoch, plan: &Plan) -> Vec<Reported> {
    let mut latest: BTreeMap<(CustomerIdx, ContractIdx, Period), i64> = BTreeMap::new();
    for (_, a) in full
        .accepted
        .iter()
        .filter(|(e, a)| *e <= through && a.event.billable())
    {
        let ev = &a.event;
        if has_spend_plan(&plan.catalog, ev.contract) {
            let t = latest
                .entry((ev.customer, ev.contract, a.service_period))
                .or_insert(i64::MIN);
            *t = (*t).max(ev.time.0);
        }
    }
    latest
        .into_iter()
        .map(|((cu, co, p), t)| ((cu, co), (p, reported_through(EventTime(t)))))
        .collect()
}

/// The rows a signed table holds after the epochs up to `through` are durable.
fn held_at<R: Ord + Clone>(rows: &[(R, Epoch, isize)], through: Epoch) -> Vec<(R, isize, u64)> {
    consolidate(
        rows.iter()
            .filter(|(_, t, _)| *t <= through)
            .map(|(r, _, d)| (r.clone(), *d)),
    )
    .into_iter()
    .map(|(r, n)| (r, n, 0u64))
    .collect()
}

fn current<R: Ord + Clone>(
    before: &[(R, isize, u64)],
    after: &[(R, Epoch, isize)],
) -> BTreeMap<R, isize> {
    consolidate(
        before
            .iter()
            .map(|(r, n, _)| (r.clone(), *n))
            .chain(after.iter().map(|(r, _, d)| (r.clone(), *d))),
    )
}

#[test]
fn a_restart_from_any_commit_ends_where_an_uninterrupted_run_does() {
    let input = input();
    let mut p = plan(fixtures::catalog());
    p.epochs_per_round = 3;
    // Sparse meters: with a low floor, usage after quiet stretches is judged a spike, so there
    // are verdicts (and retractions) to carry across restarts.
    p.anomalies.min_volume = meterflow_schemas::money::Quantity::from_units(1);
    p.anomalies.min_events = 0;
    let chunk = 2048;
    let full = run(&input, p.clone(), 1, chunk).unwrap();
    assert!(full.counts.balanced());
    assert!(full.counts.late >= 2 && full.counts.duplicates > 0 && full.counts.corrections == 2);
    assert!(full.progress.len() >= 5, "commits: {}", full.progress.len());
    let last = full.progress.last().unwrap();
    assert_eq!(
        (last.counts.received, last.counts.accepted),
        (full.counts.received, full.counts.accepted),
        "the final commit covers everything"
    );
    for w in full.progress.windows(2) {
        assert!(
            w[0].epoch < w[1].epoch && (w[0].epoch + 1) % 3 == 0,
            "commits land on round ends"
        );
    }

    let full_lines = consolidate(full.invoice_lines.iter().map(|(r, _, d)| (r.clone(), *d)));
    for meter in ["seats", "active_users", "disk"] {
        let sku = p.catalog.sku(meter).unwrap();
        let lines = full_lines.keys().filter(|l| l.key.sku == sku);
        assert!(
            lines.count() >= 4,
            "{meter} has lines to carry across restarts"
        );
    }
    let full_usage = consolidate(full.line_usage.iter().map(|(r, _, d)| (r.clone(), *d)));
    let full_rated = consolidate(full.rated_usage.iter().map(|(r, _, d)| (r.clone(), *d)));
    let full_buckets = consolidate(full.usage_buckets.iter().map(|(r, _, d)| (*r, *d)));
    let full_anomalies = consolidate(full.anomalies.iter().map(|(r, _, d)| (r.clone(), *d)));
    assert!(
        full_anomalies.len() >= 3,
        "the input has anomalies to carry: {full_anomalies:?}"
    );
    let n = full.progress.len();
    for (k, commit) in [
        full.progress[0].clone(),
        full.progress[n / 3].clone(),
        full.progress[2 * n / 3].clone(),
        full.progress[n - 2].clone(),
    ]
    .into_iter()
    .enumerate()
    {
        for workers in [1, 2] {
            let (resume, held) = state_at(&full, &commit, 7 * 24 * 3_600_000, &p);
            let again =
                run_resumed(&input, p.clone(), workers, chunk, resume, held.clone()).unwrap();
            let at = format!(
                "restart #{k} after epoch {} with {workers} workers",
                commit.epoch
            );
            assert_eq!(
                current(&held.invoice_lines, &again.invoice_lines),
                full_lines,
                "{at}: invoice lines"
            );
            assert_eq!(
                current(&held.line_usage, &again.line_usage),
                full_usage,
                "{at}: line usage"
            );
            assert_eq!(
                current(&held.rated_usage, &again.rated_usage),
                full_rated,
                "{at}: rated usage"
            );
            // Buckets and verdicts older than what a restart loads stay in the table as written.
            let (buckets_from, verdicts_from) =
                Detector::new(p.anomalies.clone(), Span::days(7), &fixtures::catalog())
                    .held_from(commit.watermark.unwrap_or(EventTime::MIN));
            let older = |rows: &[(BucketRow, Epoch, isize)]| {
                rows.iter()
                    .filter(|(b, t, _)| *t <= commit.epoch && b.start < buckets_from)
                    .map(|(b, t, d)| (*b, *t, *d))
                    .collect::<Vec<_>>()
            };
            let mut buckets = current(&held.usage_buckets, &again.usage_buckets);
            for (b, n) in consolidate(
                older(&full.usage_buckets)
                    .into_iter()
                    .map(|(b, _, d)| (b, d)),
            ) {
                *buckets.entry(b).or_default() += n;
            }
            buckets.retain(|_, n| *n != 0);
            assert_eq!(buckets, full_buckets, "{at}: usage buckets");
            let mut anomalies = current(&held.anomalies, &again.anomalies);
            for (a, n) in consolidate(
                full.anomalies
                    .iter()
                    .filter(|(a, t, _)| {
                        *t <= commit.epoch && a.kind != AnomalyKind::Cost && a.end < verdicts_from
                    })
                    .map(|(a, _, d)| (a.clone(), *d)),
            ) {
                *anomalies.entry(a).or_default() += n;
            }
            anomalies.retain(|_, n| *n != 0);
            assert_eq!(anomalies, full_anomalies, "{at}: anomalies");
            let c = &again.counts;
            let f = &full.counts;
            assert_eq!(
                (
                    c.received,
                    c.accepted,
                    c.duplicates,
                    c.rejected,
                    c.late,
                    c.corrections
                ),
                (
                    f.received,
                    f.accepted,
                    f.duplicates,
                    f.rejected,
                    f.late,
                    f.corrections
                ),
                "{at}: counts"
            );
            let mut ids: Vec<_> = full
                .accepted
                .iter()
                .filter(|(e, _)| *e <= commit.epoch)
                .chain(again.accepted.iter())
                .map(|(e, a)| (a.event.event_id.clone(), *e, a.arrival, a.invoice_period))
                .collect();
            let mut all: Vec<_> = full
                .accepted
                .iter()
                .map(|(e, a)| (a.event.event_id.clone(), *e, a.arrival, a.invoice_period))
                .collect();
            ids.sort();
            all.sort();
            assert_eq!(
                ids, all,
                "{at}: every event accepted once, in the same epoch and period"
            );
        }
    }
}
