//! Deterministic dataflow tests: chosen inputs, chunked into chosen epochs, asserting on the
//! (data, time, diff) that leaves.

use meterflow_operators::testing::{plan, run, RunOutput};
use meterflow_schemas::fixtures::{self, api, event};
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::rows::{Arrival, LineKind};

fn lines(records: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r.as_bytes());
        out.push(b'\n');
    }
    out
}

/// One record per epoch: chunk size 1 byte makes every line its own chunk.
fn run_each_own_epoch(records: &[String], workers: usize) -> RunOutput {
    run(&lines(records), plan(fixtures::catalog()), workers, 1).expect("run succeeds")
}

fn amount(s: &str) -> Amount {
    Amount::parse_price(s).unwrap()
}

/// A seats reading of acme's (a peak meter).
fn seats(id: &str, quantity: &str, time: &str) -> String {
    event(id, "acme", "acme-2026", "seats", "seats", quantity, time)
}

#[test]
fn duplicates_are_counted_once_and_conflicts_rejected() {
    let records = vec![
        api("e1", "10", "2026-11-01T00:00:00Z"),
        api("e1", "10", "2026-11-01T00:00:00Z"),
        api("e2", "5", "2026-11-02T00:00:00Z"),
        api("e2", "6", "2026-11-02T00:00:00Z"),
        "{not json".to_string(),
    ];
    for workers in [1, 2] {
        let out = run_each_own_epoch(&records, workers);
        let c = &out.counts;
        assert_eq!(
            (c.received, c.accepted, c.duplicates, c.rejected),
            (5, 2, 1, 2),
            "workers={workers}"
        );
        assert!(c.balanced());
        assert_eq!(c.rejected_for(Reason::ConflictingDuplicate), 1);
        assert_eq!(c.rejected_for(Reason::MalformedJson), 1);
        let lines = out.current_lines();
        assert_eq!(lines.len(), 1);
        let (line, _) = lines.iter().next().unwrap();
        assert_eq!(line.quantity, Quantity::from_units(15));
        assert_eq!(line.amount_exact, amount("0.015"));
        assert_eq!(line.amount, amount("0.02"));
        assert_eq!(line.kind, LineKind::Usage);
        // Rounded once to cents, half-even: 0.015 → 0.02.
        assert_eq!(line.amount.format_fixed(2), "0.02");
    }
}

#[test]
fn each_epoch_emits_a_retraction_and_a_new_line() {
    let records = vec![
        api("e1", "10", "2026-11-01T00:00:00Z"),
        api("e2", "5", "2026-11-02T00:00:00Z"),
    ];
    let out = run_each_own_epoch(&records, 1);
    let mut changes: Vec<(Quantity, u64, isize)> = out
        .invoice_lines
        .iter()
        .map(|(l, t, d)| (l.quantity, *t, *d))
        .collect();
    changes.sort_by_key(|c| (c.1, c.2));
    // Epoch of e1: +10. Epoch of e2: -10 then +15.
    let first = changes[0].1;
    assert_eq!(
        changes,
        vec![
            (Quantity::from_units(10), first, 1),
            (Quantity::from_units(10), changes[1].1, -1),
            (Quantity::from_units(15), changes[2].1, 1)
        ]
    );
    assert!(changes[1].1 > first);
}

#[test]
fn a_late_event_becomes_an_adjustment_in_the_open_period() {
    // October usage, then November moves the watermark past October's end + 1h, then a late
    // October event arrives.
    let records = vec![
        api("oct-1", "100", "2026-10-20T00:00:00Z"),
        api("nov-1", "1", "2026-11-03T00:00:00Z"),
        api("oct-late", "50", "2026-10-31T12:00:00Z"),
        api("oct-in-window", "7", "2026-10-31T23:30:00Z"),
    ];
    for workers in [1, 2] {
        let out = run_each_own_epoch(&records, workers);
        assert_eq!(
            out.counts.late, 2,
            "both October events after the close are late"
        );
        let late: Vec<_> = out
            .accepted
            .iter()
            .filter(|(_, a)| a.arrival == Arrival::Late)
            .collect();
        assert_eq!(late.len(), 2);
        let lines = out.current_lines();
        let adjustment: Vec<_> = lines
            .keys()
            .filter(|l| l.kind == LineKind::Adjustment)
            .collect();
        assert_eq!(adjustment.len(), 1);
        let adj = adjustment[0];
        assert_eq!(adj.quantity, Quantity::from_units(57));
        assert_eq!(adj.amount_exact, amount("0.057"));
        assert!(
            adj.invoice_period > adj.key.service_period,
            "billed in November for October"
        );
        let usage_oct = lines
            .keys()
            .find(|l| l.kind == LineKind::Usage && l.key.service_period == adj.key.service_period)
            .unwrap();
        assert_eq!(
            usage_oct.quantity,
            Quantity::from_units(100),
            "the closed October line is not rewritten"
        );
    }
}

#[test]
fn in_window_out_of_order_events_count_in_their_own_period() {
    let records = vec![
        api("a", "1", "2026-11-02T00:00:00Z"),
        api("b", "2", "2026-11-01T00:00:00Z"),
    ];
    let out = run_each_own_epoch(&records, 1);
    assert_eq!(out.counts.out_of_order, 1);
    assert_eq!(out.counts.late, 0);
    assert_eq!(
        out.current_lines().keys().next().unwrap().quantity,
        Quantity::from_units(3)
    );
}

#[test]
fn a_void_retracts_its_original() {
    let t = "2026-11-01T00:00:00Z";
    let void = |id: &str, q: &str| {
        api(id, q, t).replace(
            r#""environment""#,
            r#""correction":{"action":"void","original_event_id":"orig"},"environment""#,
        )
    };
    let records = vec![
        api("orig", "40", t),
        api("other", "2", t),
        void("v1", "-40"),
        void("v2", "-40"),
        void("v3", "-40"),
    ];
    let out = run_each_own_epoch(&records, 2);
    let c = &out.counts;
    assert_eq!(c.corrections, 1);
    assert_eq!(c.duplicates, 0);
    assert_eq!(
        c.rejected_for(Reason::CorrectionAfterVoid),
        2,
        "a voided event cannot be voided again"
    );
    let current = out.current_lines();
    assert_eq!(
        current.keys().next().unwrap().quantity,
        Quantity::from_units(2)
    );
    // The history shows the 42 line retracted, replaced by the 2 line.
    assert!(out
        .invoice_lines
        .iter()
        .any(|(l, _, d)| l.quantity == Quantity::from_units(42) && *d == -1));
}

#[test]
fn a_mismatched_void_or_unknown_original_is_rejected() {
    let t = "2026-11-01T00:00:00Z";
    let records = vec![
        api("orig", "40", t),
        api("v1", "-30", t).replace(
            r#""environment""#,
            r#""correction":{"action":"void","original_event_id":"orig"},"environment""#,
        ),
        api("a1", "-5", t).replace(
            r#""environment""#,
            r#""correction":{"action":"amend","original_event_id":"nope"},"environment""#,
        ),
    ];
    let out = run_each_own_epoch(&records, 1);
    assert_eq!(out.counts.rejected_for(Reason::CorrectionMismatch), 1);
    assert_eq!(
        out.counts.rejected_for(Reason::CorrectionUnknownOriginal),
        1
    );
    let r = out
        .rejections
        .iter()
        .find(|r| r.reason == Reason::CorrectionMismatch)
        .unwrap();
    assert!(
        r.raw.contains("\"v1\""),
        "dedup-stage rejections carry the event: {}",
        r.raw
    );
}

#[test]
fn too_old_for_the_dedup_horizon() {
    let records = vec![
        api("new", "1", "2026-11-20T00:00:00Z"),
        api("old", "1", "2026-11-10T00:00:00Z"),
    ];
    let out = run_each_own_epoch(&records, 1);
    assert_eq!(out.counts.rejected_for(Reason::TimestampTooOld), 1);
}

#[test]
fn a_rate_change_mid_period_prices_each_side_at_its_version() {
    // tokens: v1 tiers 0..1000 @0.01 (+5), 1000..10000 @0.005 (+1); v2 (from Nov 15) @0.02 / 0.004.
    let tok = |id: &str, q: &str, t: &str| event(id, "acme", "acme-2026", "tokens", "tokens", q, t);
    let records = vec![
        tok("t1", "800", "2026-11-10T00:00:00Z"),
        tok("t2", "400", "2026-11-16T00:00:00Z"),
    ];
    let out = run_each_own_epoch(&records, 2);
    let lines = out.current_lines();
    assert_eq!(lines.len(), 1);
    let line = lines.keys().next().unwrap();
    // v1: 800 × 0.01 + 5; v2 continues at 800: 200 × 0.02 + 200 × 0.004 + 1.
    assert_eq!(
        line.amount_exact,
        amount("8") + amount("5") + amount("4") + amount("0.8") + amount("1")
    );
    let rated = out.current_rated();
    assert_eq!(
        rated.len(),
        3,
        "one row per (version, tier) touched: {rated:?}"
    );
}

#[test]
fn sandbox_usage_is_counted_but_not_priced() {
    let records = vec![api("s1", "5", "2026-11-01T00:00:00Z").replace("production", "sandbox")];
    let out = run_each_own_epoch(&records, 1);
    assert_eq!((out.counts.accepted, out.counts.billable), (1, 0));
    assert!(out.current_lines().is_empty());
    assert_eq!(out.accepted.len(), 1);
}

#[test]
fn voiding_every_event_of_a_line_retracts_the_line() {
    let t = "2026-11-01T00:00:00Z";
    let tokens = |id: &str, q: &str| event(id, "acme", "acme-2026", "tokens", "tokens", q, t);
    let void = tokens("v1", "-500").replace(
        r#""environment""#,
        r#""correction":{"action":"void","original_event_id":"only"},"environment""#,
    );
    let out = run_each_own_epoch(&[tokens("only", "500"), void], 1);
    assert!(
        out.current_lines().is_empty(),
        "no line, not even the first tier's flat fee: {:?}",
        out.current_lines()
    );
    let history: Vec<isize> = out.invoice_lines.iter().map(|(_, _, d)| *d).collect();
    assert_eq!(history, vec![1, -1]);
}

#[test]
fn a_threshold_signal_fires_once_and_a_void_retracts_it() {
    use meterflow_schemas::entitlement::SignalKind;
    let catalog = meterflow_schemas::catalog::from_toml_str(&fixtures::CATALOG.replace(
        "rate_card = \"standard\"\nstarts = \"2026-01-01T00:00:00Z\"\n\n[[contract]]",
        "rate_card = \"standard\"\nstarts = \"2026-01-01T00:00:00Z\"\n[[contract.entitlement]]\nsku = \"api_calls\"\nincluded = \"100\"\n\n[[contract]]",
    ))
    .unwrap();
    assert_eq!(catalog.contracts[0].entitlements.len(), 1);
    let t = "2026-11-01T00:00:00Z";
    let records = vec![
        api("a", "40", t),
        api("b", "15", t), // 55: crosses 50%
        api("c", "5", t),  // 60: nothing new
        api("v", "-15", t).replace(
            r#""environment""#,
            r#""correction":{"action":"void","original_event_id":"b"},"environment""#,
        ), // back to 45: the 50% signal is retracted
    ];
    for workers in [1, 2] {
        let out = run(&lines(&records), plan(catalog.clone()), workers, 1).unwrap();
        let history: Vec<(u32, isize)> = out
            .entitlement_signals
            .iter()
            .filter(|(s, _, _)| s.kind == SignalKind::Threshold)
            .map(|(s, _, d)| (s.percent, *d))
            .collect();
        assert_eq!(history, vec![(50, 1), (50, -1)], "workers={workers}");
        let fired = &out.entitlement_signals[0].0;
        assert_eq!(fired.at, Quantity::from_units(50));
        assert_eq!(fired.allowance, Quantity::from_units(100));
    }
}

#[test]
fn shadow_lines_equal_live_lines_when_the_shadow_card_is_the_live_one() {
    // acme follows the card; after 2026-11-15 its live price is version 2, which is also the
    // latest version the shadow card prices by.
    let catalog = meterflow_schemas::catalog::from_toml_str(&format!(
        "shadow_rate_card = \"standard\"\n{}",
        fixtures::CATALOG
    ))
    .unwrap();
    let after = "2026-11-20T00:00:00Z";
    let before = "2026-11-02T00:00:00Z";
    let tokens =
        |id: &str, q: &str, t: &str| event(id, "acme", "acme-2026", "tokens", "tokens", q, t);
    let same = vec![
        api("a", "1200", after),
        tokens("b", "5000", after),
        api("c", "7", after),
    ];
    let out = run(&lines(&same), plan(catalog.clone()), 2, 64).unwrap();
    let current = |rows: &[(meterflow_schemas::rows::InvoiceLine, u64, isize)]| {
        let mut net: std::collections::BTreeMap<_, isize> = Default::default();
        for (l, _, d) in rows {
            *net.entry(l.clone()).or_default() += d;
        }
        net.retain(|_, n| *n != 0);
        net
    };
    let live = current(&out.invoice_lines);
    assert!(!live.is_empty());
    assert_eq!(current(&out.shadow_invoice_lines), live);
    // Before the change, live usage is priced by version 1 and the shadow by version 2.
    let earlier = vec![tokens("d", "5000", before)];
    let out = run(&lines(&earlier), plan(catalog), 1, 64).unwrap();
    let total = |m: &std::collections::BTreeMap<meterflow_schemas::rows::InvoiceLine, isize>| {
        m.keys().map(|l| l.amount_exact).sum::<Amount>()
    };
    assert_ne!(
        total(&current(&out.shadow_invoice_lines)),
        total(&current(&out.invoice_lines))
    );
}

#[test]
fn a_count_meter_bills_events_not_quantities() {
    let catalog = meterflow_schemas::catalog::from_toml_str(&fixtures::CATALOG.replacen(
        "unit = \"requests\"",
        "unit = \"requests\"\naggregation = \"count\"",
        1,
    ))
    .unwrap();
    let t = "2026-11-01T00:00:00Z";
    let records = vec![
        api("a", "10", t),
        api("b", "5", t),
        api("c", "7", t),
        api("v", "-5", t).replace(
            r#""environment""#,
            r#""correction":{"action":"void","original_event_id":"b"},"environment""#,
        ),
        api("m", "-3", t).replace(
            r#""environment""#,
            r#""correction":{"action":"amend","original_event_id":"c"},"environment""#,
        ),
    ];
    for workers in [1, 2] {
        let out = run(&lines(&records), plan(catalog.clone()), workers, 1).unwrap();
        let current = out.current_lines();
        assert_eq!(current.len(), 1);
        let (line, _) = current.iter().next().unwrap();
        assert_eq!(
            out.counts.corrections, 2,
            "the void and the amend are accepted"
        );
        // a and c count; b was voided; the amend of c counts nothing.
        assert_eq!(line.quantity, Quantity::from_units(2), "workers={workers}");
        assert_eq!(line.events, 2);
    }
}

/// Readings of acme's peak, distinct-count and gauge meters in November (the rate card changes
/// on the 15th).
fn meter_readings() -> Vec<String> {
    let m = |id: &str, sku: &str, unit: &str, q: &str, day: u32| {
        event(
            id,
            "acme",
            "acme-2026",
            sku,
            unit,
            q,
            &format!("2026-11-{day:02}T12:00:00Z"),
        )
    };
    let mut r = Vec::new();
    for i in 1..=12 {
        let u = m(&format!("u{i}"), "active_users", "users", "1", 3);
        r.push(fixtures::with_user(&u, &format!("user-{i}")));
    }
    // user-1 again, and a reading of user-13 that is voided.
    let again = m("u1-again", "active_users", "users", "1", 9);
    r.push(fixtures::with_user(&again, "user-1"));
    let u13 = fixtures::with_user(&m("u13", "active_users", "users", "1", 9), "user-13");
    r.push(u13.clone());
    r.push(fixtures::void_of(&u13, "u13", "1", "void-u13"));
    let s2 = m("s2", "seats", "seats", "12", 3);
    r.extend([
        m("s1", "seats", "seats", "5", 2),
        s2.clone(),
        fixtures::void_of(&s2, "s2", "12", "void-s2"),
        m("d1", "disk", "GB", "100", 2),
        m("s3", "seats", "seats", "8", 20),
        m("d3", "disk", "GB", "40", 20),
        // Arrives last, but is not the latest reading.
        m("d2", "disk", "GB", "300", 14),
    ]);
    r
}

#[test]
fn peak_distinct_and_latest_meters_bill_their_period_whatever_the_epochs_and_workers() {
    let records = meter_readings();
    let catalog = fixtures::catalog();
    let want = |sku: &str| catalog.sku(sku).unwrap();
    for (workers, chunk) in [(1, 1), (2, 1), (1, 1 << 20), (2, 300)] {
        let out = run(&lines(&records), plan(catalog.clone()), workers, chunk).unwrap();
        assert!(out.counts.balanced());
        assert_eq!(out.counts.rejected, 0, "{:?}", out.rejections);
        let got = |sku: &str| {
            let current = out.current_lines();
            let mut ls = current.keys().filter(|l| l.key.sku == want(sku));
            let l = ls.next().unwrap_or_else(|| panic!("{sku} has a line"));
            assert!(ls.next().is_none(), "{sku}: one line");
            (l.events, l.quantity, l.amount)
        };
        let at = format!("workers={workers} chunk={chunk}");
        // Peak 12 voided: the peak is 8; a reading after the 15th prices it at version 2 (12).
        assert_eq!(
            got("seats"),
            (2, Quantity::from_units(8), amount("96")),
            "{at}"
        );
        // 12 distinct users (user-13 voided, user-1 twice): 2 above the 10 free, at 2.5.
        assert_eq!(
            got("active_users"),
            (13, Quantity::from_units(12), amount("5")),
            "{at}"
        );
        // The last reading by event time is the 20th's 40 GB, though the 14th's came after it.
        assert_eq!(
            got("disk"),
            (3, Quantity::from_units(40), amount("10")),
            "{at}"
        );
    }
}

#[test]
fn a_late_higher_peak_is_billed_as_an_adjustment_of_the_increase() {
    let records = vec![
        seats("s1", "10", "2026-10-05T00:00:00Z"),
        seats("s2", "3", "2026-11-02T00:00:00Z"),
        // Past the tolerance: October's peak rises from 10 to 25.
        seats("s3", "25", "2026-10-30T00:00:00Z"),
    ];
    let out = run_each_own_epoch(&records, 1);
    let seats = fixtures::catalog().sku("seats").unwrap();
    let october_period = meterflow_schemas::time::Period(
        meterflow_schemas::time::EventTime::from_civil(2026, 10, 1),
    );
    let october: Vec<_> = out
        .current_lines()
        .into_keys()
        .filter(|l| l.key.sku == seats && l.key.service_period == october_period)
        .map(|l| (l.kind, l.events, l.quantity, l.amount))
        .collect();
    assert_eq!(
        october,
        vec![
            (LineKind::Usage, 1, Quantity::from_units(10), amount("100")),
            (
                LineKind::Adjustment,
                1,
                Quantity::from_units(15),
                amount("150")
            ),
        ]
    );
}

#[test]
fn an_amend_of_a_reading_is_rejected_and_a_unique_count_needs_its_attribute() {
    let records = vec![
        seats("s1", "10", "2026-11-05T00:00:00Z"),
        event(
            "s1-fix",
            "acme",
            "acme-2026",
            "seats",
            "seats",
            "-2",
            "2026-11-05T00:00:00Z",
        )
        .replace(
            r#""environment""#,
            r#""correction":{"action":"amend","original_event_id":"s1"},"environment""#,
        ),
        event(
            "u1",
            "acme",
            "acme-2026",
            "active_users",
            "users",
            "1",
            "2026-11-05T00:00:00Z",
        ),
    ];
    let out = run_each_own_epoch(&records, 1);
    assert_eq!(out.counts.rejected_for(Reason::AmendNotSupported), 1);
    assert_eq!(out.counts.rejected_for(Reason::MissingField), 1);
    let fields: Vec<_> = out.rejections.iter().map(|r| r.field.as_deref()).collect();
    assert!(fields.contains(&Some("metadata.attributes")), "{fields:?}");
}

#[test]
fn per_transaction_minimum_and_maximum_fees_bound_each_payment_across_a_rate_change() {
    let catalog = meterflow_schemas::catalog::from_toml_str(
        &fixtures::CATALOG
            .replacen(
                "[[sku]]\nid = \"seats\"",
                "[[sku]]\nid = \"payments\"\nunit = \"USD\"\n\n[[sku]]\nid = \"seats\"",
                1,
            )
            .replacen(
                "sku = \"disk\"\nmodel = \"per_unit\"\nunit_price = \"0.2\"\n",
                "sku = \"disk\"\nmodel = \"per_unit\"\nunit_price = \"0.2\"\n[[rate_card.price]]\nsku = \"payments\"\nmodel = \"percentage\"\npercent = \"2.9\"\nfixed_fee = \"0.30\"\nmin_fee = \"0.50\"\nmax_fee = \"5\"\n",
                1,
            )
            .replacen(
                "sku = \"disk\"\nmodel = \"per_unit\"\nunit_price = \"0.25\"\n",
                "sku = \"disk\"\nmodel = \"per_unit\"\nunit_price = \"0.25\"\n[[rate_card.price]]\nsku = \"payments\"\nmodel = \"percentage\"\npercent = \"2.5\"\nfixed_fee = \"0.25\"\nmin_fee = \"0.40\"\nmax_fee = \"4\"\n",
                1,
            ),
    )
    .unwrap();
    let pay = |id: &str, amount: &str, day: u32| {
        event(
            id,
            "acme",
            "acme-2026",
            "payments",
            "USD",
            amount,
            &format!("2026-11-{day:02}T10:00:00Z"),
        )
    };
    let t3 = pay("t3", "500", 5);
    let records = vec![
        pay("t1", "2", 3),
        pay("t2", "10", 4),
        t3.clone(),
        // An amend cannot be bounded without the whole amount: rejected.
        pay("t2-fix", "-1", 4).replace(
            r#""environment""#,
            r#""correction":{"action":"amend","original_event_id":"t2"},"environment""#,
        ),
        fixtures::void_of(&t3, "t3", "500", "void-t3"),
        pay("t4", "1000", 20),
        pay("t5", "1", 21),
    ];
    for (workers, chunk) in [(1, 1), (2, 1), (2, 1 << 20)] {
        let out = run(&lines(&records), plan(catalog.clone()), workers, chunk).unwrap();
        assert_eq!(out.counts.rejected_for(Reason::AmendNotSupported), 1);
        let current = out.current_lines();
        assert_eq!(current.len(), 1, "workers={workers} chunk={chunk}");
        let (line, _) = current.iter().next().unwrap();
        // v1: 2.00 pays the 0.50 minimum, 10.00 pays 0.59, 500.00 (capped at 5.00) is voided;
        // v2: 1000.00 pays the 4.00 maximum, 1.00 the 0.40 minimum.
        assert_eq!(
            (line.events, line.quantity, line.amount_exact),
            (4, Quantity::from_units(1013), amount("5.49")),
            "workers={workers} chunk={chunk}"
        );
        let rated: Vec<_> = out.current_rated().into_keys().map(|r| r.amount).collect();
        assert_eq!(rated, vec![amount("1.09"), amount("4.4")], "per version");
    }
}

#[test]
fn spend_ahead_of_a_budget_burns_and_a_void_takes_the_signal_back() {
    use meterflow_schemas::entitlement::SignalKind;
    let catalog = meterflow_schemas::catalog::from_toml_str(&fixtures::CATALOG.replacen(
        "id = \"acme-2026\"\ncustomer = \"acme\"",
        "id = \"acme-2026\"\ncustomer = \"acme\"\nbudget = \"100\"",
        1,
    ))
    .unwrap();
    // 5 000 calls on the 2nd: too early in the month to judge. 40 000 more on the 6th (40.00 of
    // spend with usage reported to 11:00, 5.46 days in): on course for about 230% of the budget.
    let early = api("e1", "5000", "2026-11-02T10:00:00Z");
    let big = api("e2", "40000", "2026-11-06T10:30:00Z");
    let burns = |out: &RunOutput| -> Vec<(SignalKind, u32)> {
        let mut current = std::collections::BTreeMap::new();
        for (s, _, d) in &out.entitlement_signals {
            *current.entry(s.clone()).or_insert(0isize) += d;
        }
        current
            .into_iter()
            .filter(|(s, n)| *n != 0 && s.kind == SignalKind::BudgetBurn)
            .map(|(s, _)| (s.kind, s.percent))
            .collect()
    };
    for workers in [1, 2] {
        let only_early = run(
            &lines(std::slice::from_ref(&early)),
            plan(catalog.clone()),
            workers,
            1,
        )
        .unwrap();
        assert!(burns(&only_early).is_empty(), "too early to judge");
        let both = vec![early.clone(), big.clone()];
        let out = run(&lines(&both), plan(catalog.clone()), workers, 1).unwrap();
        // 45.00 over 5 days 11 hours of 30 days: 45 × 720 / 131 = 247%: at least 200%.
        assert_eq!(
            burns(&out),
            vec![(SignalKind::BudgetBurn, 200)],
            "workers={workers}"
        );
        let mut voided = both.clone();
        voided.push(fixtures::void_of(&big, "e2", "40000", "void-e2"));
        let out = run(&lines(&voided), plan(catalog.clone()), workers, 1).unwrap();
        assert!(burns(&out).is_empty(), "the void brings spend back on plan");
    }
}

#[test]
fn a_contract_starting_mid_month_pays_its_share_of_the_fee_and_the_minimum() {
    let catalog = meterflow_schemas::catalog::from_toml_str(&format!(
        "{}\n[[contract]]\nid = \"acme-late\"\ncustomer = \"acme\"\nrate_card = \"standard\"\nstarts = \"2026-11-16T00:00:00Z\"\nminimum_spend = \"100\"\n[[contract.fee]]\nname = \"platform\"\namount = \"30\"\n",
        fixtures::CATALOG
    ))
    .unwrap();
    let records = vec![event(
        "e1",
        "acme",
        "acme-late",
        "api_calls",
        "requests",
        "1000",
        "2026-11-20T00:00:00Z",
    )];
    let out = run(&lines(&records), plan(catalog), 1, 1).unwrap();
    let got: Vec<(LineKind, Amount)> = out
        .current_lines()
        .into_keys()
        .map(|l| (l.kind, l.amount))
        .collect();
    // 15 of 30 days: half the fee (15.00) and half the minimum (50): true-up 50 - 0.80 - 15.
    assert_eq!(
        got,
        vec![
            (LineKind::Usage, amount("0.8")),
            (LineKind::Subscription, amount("15")),
            (LineKind::Commitment, amount("34.2")),
        ]
    );
}

#[test]
fn a_month_without_usage_still_bills_the_subscription_and_the_commitment() {
    let catalog = meterflow_schemas::catalog::from_toml_str(&fixtures::CATALOG.replacen(
        "id = \"acme-2026\"\ncustomer = \"acme\"\nrate_card = \"standard\"\nstarts = \"2026-01-01T00:00:00Z\"\n",
        "id = \"acme-2026\"\ncustomer = \"acme\"\nrate_card = \"standard\"\nstarts = \"2026-01-01T00:00:00Z\"\nminimum_spend = \"60\"\n[[contract.fee]]\nname = \"platform\"\namount = \"49\"\n",
        1,
    ))
    .unwrap();
    // acme uses the API in October only; globex's November usage moves the stream into
    // November.
    let records = vec![
        api("a1", "1000", "2026-10-10T00:00:00Z"),
        event(
            "g1",
            "globex",
            "globex-legacy",
            "api_calls",
            "requests",
            "10",
            "2026-11-05T00:00:00Z",
        ),
    ];
    for workers in [1, 2] {
        let out = run(&lines(&records), plan(catalog.clone()), workers, 1).unwrap();
        let acme = catalog.customer("acme").unwrap();
        let got: Vec<(u32, LineKind, Amount)> = out
            .current_lines()
            .into_keys()
            .filter(|l| l.key.customer == acme)
            .map(|l| (l.invoice_period.0.civil().month, l.kind, l.amount))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, LineKind::Usage, amount("1")),
                (10, LineKind::Subscription, amount("49")),
                (10, LineKind::Commitment, amount("10")),
                (11, LineKind::Subscription, amount("49")),
                (11, LineKind::Commitment, amount("11")),
            ],
            "workers={workers}"
        );
    }
}

#[test]
fn a_spike_and_a_silent_meter_are_found_whatever_the_epochs_and_workers() {
    use meterflow_operators::testing::consolidate;
    use meterflow_schemas::anomaly::AnomalyKind;
    use meterflow_schemas::time::EventTime;
    let (records, spike, silence) = fixtures::anomaly_stream();
    let mut seen = Vec::new();
    for (workers, chunk) in [(1, 4096), (2, 4096), (2, 100_000)] {
        let out = run(&lines(&records), plan(fixtures::catalog()), workers, chunk).unwrap();
        let found = consolidate(out.anomalies.iter().map(|(a, _, d)| (a.clone(), *d)));
        let kinds: Vec<(AnomalyKind, EventTime)> =
            found.keys().map(|a| (a.kind, a.start)).collect();
        assert_eq!(
            kinds,
            vec![(AnomalyKind::Spike, spike), (AnomalyKind::Silent, silence)],
            "workers={workers} chunk={chunk}"
        );
        let buckets = consolidate(out.usage_buckets.iter().map(|(b, _, d)| (*b, *d)));
        assert_eq!(
            buckets.len() as i64,
            35 * 24 - 6,
            "one row per hour with usage"
        );
        assert!(buckets.values().all(|&n| n == 1));
        seen.push((found, buckets));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "same rows either way"
    );
}

#[test]
fn a_margin_under_the_floor_is_a_cost_anomaly_until_a_correction_lifts_it() {
    use meterflow_operators::testing::consolidate;
    use meterflow_schemas::anomaly::{AnomalyKind, Baseline, Severity};
    // api_calls bill 0.001 and cost 0.0009 to serve: a 10% gross margin, under the 20% floor.
    let catalog = meterflow_schemas::catalog::from_toml_str(&fixtures::CATALOG.replacen(
        "model = \"per_unit\"\nunit_price = \"0.001\"",
        "model = \"per_unit\"\nunit_price = \"0.001\"\nunit_cost = \"0.0009\"",
        1,
    ))
    .unwrap();
    let t = "2026-10-05T10:00:00Z";
    let void_b = api("v", "-20000", t).replace(
        r#""environment""#,
        r#""correction":{"action":"void","original_event_id":"b"},"environment""#,
    );
    let records = vec![
        api("a", "5000", t),  // cost 4.5: under min_cost, nobody is paged
        api("b", "20000", t), // cost 22.5 against 25 billed
        void_b,               // back to cost 4.5
    ];
    for workers in [1, 2] {
        let out = run(&lines(&records), plan(catalog.clone()), workers, 1).unwrap();
        let history: Vec<(AnomalyKind, isize)> =
            out.anomalies.iter().map(|(a, _, d)| (a.kind, *d)).collect();
        assert_eq!(
            history,
            vec![(AnomalyKind::Cost, 1), (AnomalyKind::Cost, -1)],
            "workers={workers}"
        );
        let a = &out.anomalies[0].0;
        assert_eq!(a.observed, Quantity::parse("22.5").unwrap());
        assert_eq!(a.expected, Quantity::parse("25").unwrap());
        assert_eq!((a.score_centi, a.severity), (1000, Severity::Warning));
        assert_eq!(a.baseline, Baseline::Margin(20));
        let text = a.explain(&catalog);
        assert!(text.contains("gross margin of 10.00%"), "{text}");
        assert!(consolidate(out.anomalies.iter().map(|(a, _, d)| (a.clone(), *d))).is_empty());
    }
}
