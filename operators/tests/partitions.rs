//! Kafka input: an event's lateness follows from its partition's log, not from how the reader
//! happened to interleave the partitions. The same partition logs, read in many different
//! epoch schedules (one partition racing ahead, another stalling, everything in one epoch),
//! give every event the same service period, invoice period and arrival class, and the same
//! invoice lines. This is what makes a restarted run (which re-reads a backlog in other epochs)
//! bill exactly what an uninterrupted one bills.

use std::collections::BTreeMap;

use meterflow_operators::testing::{plan, run_messages, RunOutput};
use meterflow_schemas::fixtures::{self, event};
use meterflow_schemas::rows::{Arrival, InvoiceLine};
use meterflow_schemas::time::{EventTime, Period};

const OCT_20: i64 = 1_792_454_400_000;
const MINUTE: i64 = 60_000;

/// One partition's log: a customer's events every 55 minutes from Oct 20 to Nov 12, with, once
/// November has begun, October events (late: October is closed once the partition is an hour
/// into November), events a few minutes behind (out of order) and retries.
fn partition_log(customer: &str, contract: &str, shift: i64) -> Vec<String> {
    let skus = [
        ("api_calls", "requests"),
        ("tokens", "tokens"),
        ("storage", "GB"),
    ];
    let at = |minute: i64| EventTime(OCT_20 + shift + minute * MINUTE).to_string();
    let mut log = Vec::new();
    for i in 0..600i64 {
        let minute = i * 55;
        let (sku, unit) = skus[(i % 3) as usize];
        let q = format!("{}", 1 + (i * 37) % 900);
        let id = format!("{customer}-{i}");
        log.push(event(&id, customer, contract, sku, unit, &q, &at(minute)));
        if i % 7 == 3 {
            let behind = format!("{customer}-{i}-behind");
            log.push(event(
                &behind,
                customer,
                contract,
                sku,
                unit,
                "5",
                &at(minute - 20),
            ));
        }
        if i > 320 && i % 11 == 0 {
            // Back in late October.
            let late = format!("{customer}-{i}-late");
            let minute = 6 * 24 * 60 + (i * 13) % (5 * 24 * 60);
            log.push(event(
                &late,
                customer,
                contract,
                sku,
                unit,
                "7",
                &at(minute),
            ));
        }
        if i % 13 == 5 {
            log.push(log[log.len().saturating_sub(30)].clone());
        }
    }
    log
}

fn logs() -> Vec<Vec<String>> {
    vec![
        partition_log("acme", "acme-2026", 0),
        partition_log("globex", "globex-legacy", 17 * MINUTE),
    ]
}

/// Epoch sizes per partition, from a seed: bursts, stalls and everything in between.
fn schedule(seed: u64, epochs: usize) -> Vec<Vec<usize>> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m) as usize
    };
    (0..epochs)
        .map(|_| {
            (0..2)
                .map(|_| match next(4) {
                    0 => 0,
                    1 => next(5),
                    2 => next(40),
                    _ => next(200),
                })
                .collect()
        })
        .collect()
}

type Classes = BTreeMap<String, (Period, Period, Arrival)>;

fn classes(out: &RunOutput) -> Classes {
    out.accepted
        .iter()
        .map(|(_, a)| {
            (
                a.event.event_id.to_string(),
                (a.service_period, a.invoice_period, a.arrival),
            )
        })
        .collect()
}

fn lines(out: &RunOutput) -> BTreeMap<InvoiceLine, isize> {
    out.current_lines()
}

fn run(schedule: Vec<Vec<usize>>) -> RunOutput {
    run_messages(logs(), schedule, plan(fixtures::catalog())).expect("run")
}

#[test]
fn every_reading_order_of_the_partitions_gives_every_event_the_same_class_and_the_same_invoice() {
    // Lockstep: ten messages from each partition per epoch.
    let reference = run(vec![vec![10, 10]; 400]);
    let want = classes(&reference);
    let arrivals = |a: Arrival| want.values().filter(|c| c.2 == a).count();
    assert!(arrivals(Arrival::Late) > 20, "late events to judge");
    assert!(arrivals(Arrival::OutOfOrder) > 50, "out-of-order events");
    assert!(
        want.values().any(|(s, i, _)| s != i),
        "adjustments billed in a later period"
    );
    assert!(reference.counts.duplicates > 0);
    let want_lines = lines(&reference);
    let schedules = (0..12)
        .map(|seed| schedule(seed, 300))
        // One partition read to its end before the other starts, both ways round.
        .chain([vec![vec![10_000, 0]], vec![vec![0, 10_000]]])
        // Everything in one epoch.
        .chain([vec![]]);
    for (i, s) in schedules.enumerate() {
        let got = run(s);
        let got_classes = classes(&got);
        let differ: Vec<_> = want
            .iter()
            .filter(|(id, c)| got_classes.get(*id) != Some(c))
            .take(5)
            .collect();
        assert!(
            differ.is_empty() && got_classes.len() == want.len(),
            "schedule {i}: classes differ, e.g. {differ:?}"
        );
        assert_eq!(lines(&got), want_lines, "schedule {i}: invoice lines");
        assert_eq!(
            (
                got.counts.accepted,
                got.counts.duplicates,
                got.counts.rejected
            ),
            (
                reference.counts.accepted,
                reference.counts.duplicates,
                reference.counts.rejected
            ),
            "schedule {i}: counts"
        );
    }
}
