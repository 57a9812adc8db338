//! `meterflow revenue` over the demo: the schedule's rows balance, a closed period recognises
//! exactly what its invoices bill (tax excluded), and a void before the period ends takes its
//! revenue out by signed rows.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use meterflow::reports::tables::{current_rows, read_table};
use meterflow_schemas::money::Amount;
use meterflow_tests::{meterflow_ok, Scratch};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

type Net = BTreeMap<(String, String, String, String), [Amount; 4]>;

/// The net of the signed `revenue_schedule` rows per (contract, obligation, service period,
/// period): billed, recognised, deferred, unbilled.
fn schedule(out: &Path) -> Net {
    let mut net = Net::new();
    for r in read_table(out, "revenue_schedule").unwrap() {
        let sign = Amount::parse(&r["sign"]).unwrap();
        let e = net
            .entry((
                r["contract_id"].clone(),
                r["obligation"].clone(),
                r["service_period"].clone(),
                r["period"].clone(),
            ))
            .or_default();
        for (i, k) in ["billed", "recognised", "deferred", "unbilled"]
            .iter()
            .enumerate()
        {
            let a = Amount::parse(&r[*k]).unwrap();
            e[i] += if sign < Amount::ZERO { -a } else { a };
        }
    }
    net.retain(|_, a| a.iter().any(|x| *x != Amount::ZERO));
    net
}

/// Writes and runs the demo in `s`: its directory, catalog and output.
fn demo(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let demo = s.path().join("demo");
    meterflow_ok(&["demo", "--dir", path(&demo)]);
    let (catalog, out) = (demo.join("catalog"), demo.join("out"));
    (demo, catalog, out)
}

/// `meterflow run` of the demo's events with `catalog` into `out`.
fn run(demo: &Path, catalog: &Path, out: &Path) {
    meterflow_ok(&[
        "run",
        "-q",
        "-i",
        path(&demo.join("events.jsonl")),
        "-c",
        path(catalog),
        "-o",
        path(out),
        "--config",
        path(&demo.join("meterflow.toml")),
    ]);
}

/// The current subscription lines of `contract` in `out`: (invoice period, amount), by period.
fn subscription_lines(out: &Path, contract: &str) -> Vec<(String, Amount)> {
    let mut lines: Vec<(String, Amount)> = current_rows(&read_table(out, "invoice_lines").unwrap())
        .iter()
        .filter(|r| r["contract_id"] == contract && r["line_type"] == "subscription")
        .map(|r| {
            (
                r["invoice_period"].clone(),
                Amount::parse(&r["amount"]).unwrap(),
            )
        })
        .collect();
    lines.sort();
    lines
}

/// `meterflow revenue` over `out`: what it prints.
fn revenue(catalog: &Path, out: &Path) -> String {
    String::from_utf8_lossy(
        &meterflow_ok(&["revenue", "-c", path(catalog), "-o", path(out)]).stdout,
    )
    .into_owned()
}

#[test]
fn the_schedule_balances_recognises_what_is_billed_and_follows_a_void() {
    let s = Scratch::new("revenue");
    let (demo, catalog, out) = demo(&s);
    let revenue = || revenue(&catalog, &out);
    let text = revenue();
    assert!(text.contains("in every row: holds"), "{text}");
    let first = schedule(&out);
    assert!(!first.is_empty());
    // Every row: recognised + deferred = billed + unbilled.
    for (k, [b, r, d, u]) in &first {
        assert_eq!(*r + *d, *b + *u, "{k:?}");
    }
    // October is closed: per contract, what the schedule bills is the invoice without tax, and
    // recognised + deferred = billed.
    let mut invoiced: BTreeMap<String, Amount> = BTreeMap::new();
    for r in current_rows(&read_table(&out, "invoice_lines").unwrap()) {
        if r["invoice_period"] == "2026-10" && r["line_type"] != "tax" {
            *invoiced.entry(r["contract_id"].clone()).or_default() +=
                Amount::parse(&r["amount"]).unwrap();
        }
    }
    let billed = per_contract(&first, Some("2026-10"));
    assert_eq!(
        billed
            .iter()
            .map(|(c, a)| (c.clone(), a[0]))
            .collect::<BTreeMap<_, _>>(),
        invoiced
    );
    for (c, [b, r, d, u]) in &billed {
        assert_eq!((*u, *r + *d), (Amount::ZERO, *b), "{c}");
    }
    // A fee is an obligation of its own, named after it: acme's October subscription line
    // (acme's only discount is on tokens) is allocated across its platform fee (49) and the
    // onboarding help that comes with it (bills 0, sells for 15 alone) by 49 : 15.
    let fee: Amount = current_rows(&read_table(&out, "invoice_lines").unwrap())
        .iter()
        .filter(|r| {
            r["contract_id"] == "acme-2026"
                && r["invoice_period"] == "2026-10"
                && r["line_type"] == "subscription"
        })
        .map(|r| Amount::parse(&r["amount"]).unwrap())
        .sum();
    let october = |o: &str| {
        let p = "2026-10".to_string();
        ("acme-2026".to_string(), o.to_string(), p.clone(), p)
    };
    assert!(fee > Amount::ZERO);
    let platform = first[&october("subscription:platform")][1];
    let onboarding = first[&october("subscription:onboarding")][1];
    assert_eq!(platform + onboarding, fee);
    assert_eq!(
        onboarding,
        Amount(fee.0 * 15 / 64),
        "the bundled fee's share by its standalone selling price"
    );
    assert!(!first.contains_key(&october("subscription")));
    // Initech's onboarding credit, prepaid when granted (March): the prepayment opens the
    // liability that its credit lines draw down.
    let grant = first[&(
        "initech-2026".to_string(),
        "prepaid credit:onboarding".to_string(),
        "2026-03".to_string(),
        "2026-03".to_string(),
    )];
    let five_thousand = Amount::parse("5000").unwrap();
    assert_eq!(
        grant,
        [five_thousand, Amount::ZERO, five_thousand, Amount::ZERO]
    );
    // After October the liability left is the grant less what its credit lines drew down, as
    // every deferred amount of the contract up to October sums to.
    let drawn: Amount = first
        .iter()
        .filter(|(k, _)| k.0 == "initech-2026" && k.3.as_str() <= "2026-10")
        .map(|(_, a)| a[2])
        .sum();
    assert_eq!(drawn, Amount::parse("4029.45").unwrap());
    assert!(
        text.contains("initech / initech-2026 — 2026-10 (USD)")
            && text.contains(
                "after 2026-10: contract liability (deferred revenue) 4029.45, contract asset (unbilled) 0.00"
            ),
        "{text}"
    );
    // Nothing changed: nothing written.
    let rows = read_table(&out, "revenue_schedule").unwrap().len();
    assert!(revenue().contains("0 rows stated, 0 retracted"));
    assert_eq!(read_table(&out, "revenue_schedule").unwrap().len(), rows);
    // The journal: every period's entry balances, and what it credits to revenue is what the
    // period recognises.
    let journal = String::from_utf8_lossy(
        &meterflow_ok(&[
            "revenue",
            "-c",
            path(&catalog),
            "-o",
            path(&out),
            "--journal",
        ])
        .stdout,
    )
    .into_owned();
    let entries = journal
        .split("Journal entries (all contracts)")
        .nth(1)
        .expect("a journal");
    let mut periods = 0;
    for entry in entries.split("\n\n").filter(|e| e.contains("account")) {
        let period = entry.trim().split(' ').next().unwrap().to_string();
        let amounts = |label: &str| -> Vec<String> {
            entry
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .map(|l| {
                    l.trim_start()[label.len()..]
                        .split_whitespace()
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let total = amounts("total");
        assert_eq!(total.len(), 2, "{entry}");
        assert_eq!(total[0], total[1], "debits = credits: {entry}");
        let recognised: Amount = first
            .iter()
            .filter(|(k, _)| k.3 == period)
            .map(|(_, a)| a[1])
            .sum();
        let revenue_line = amounts("revenue");
        if recognised != Amount::ZERO {
            assert_eq!(
                revenue_line.last().map(String::as_str),
                Some(
                    recognised
                        .round_to(2, meterflow_schemas::money::Rounding::HalfEven)
                        .format_fixed(2)
                        .as_str()
                ),
                "{entry}"
            );
        }
        periods += 1;
    }
    assert!(periods >= 3, "{journal}");

    // A void of an acme storage event of November, before November closes.
    let events = std::fs::read_to_string(demo.join("events.jsonl")).unwrap();
    let original: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["customer_id"] == "acme"
                && e["sku"] == "storage"
                && e["timestamp"].as_str().is_some_and(|t| t > "2026-11-18")
        })
        .expect("a recent acme storage event");
    let mut void = original.clone();
    void["event_id"] = "evt-revenue-void".into();
    void["quantity"] = format!("-{}", original["quantity"].as_str().unwrap()).into();
    void["correction"] =
        serde_json::json!({"action": "void", "original_event_id": original["event_id"]});
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(demo.join("events.jsonl"))
        .unwrap();
    writeln!(f, "{void}").unwrap();
    drop(f);
    run(&demo, &catalog, &out);
    let text = revenue();
    assert!(
        text.contains("1 retracted") || text.contains("retracted"),
        "{text}"
    );
    let after = schedule(&out);
    let key = (
        "acme-2026".to_string(),
        "usage:storage".to_string(),
        "2026-11".to_string(),
        "2026-11".to_string(),
    );
    assert!(
        after[&key][1] < first[&key][1],
        "the void takes revenue out: {:?} → {:?}",
        first[&key],
        after[&key]
    );
    let new: Vec<_> = read_table(&out, "revenue_schedule")
        .unwrap()
        .into_iter()
        .skip(rows)
        .collect();
    let retracted: Vec<_> = new.iter().filter(|r| r["sign"] == "-1").collect();
    assert!(
        retracted.iter().any(|r| r["contract_id"] == "acme-2026"
            && r["obligation"] == "usage:storage"
            && Amount::parse(&r["recognised"]).unwrap() == first[&key][1]),
        "the row it replaces is retracted as it was: {new:?}"
    );
    // Only acme's November changed.
    for (k, a) in &after {
        if !(k.0 == "acme-2026" && k.3 == "2026-11") {
            assert_eq!(first.get(k), Some(a), "{k:?}");
        }
    }
}

/// Per contract: billed, recognised, deferred, unbilled over every row (of one period).
fn per_contract(net: &Net, period: Option<&str>) -> BTreeMap<String, [Amount; 4]> {
    let mut out: BTreeMap<String, [Amount; 4]> = BTreeMap::new();
    for ((contract, _, _, p), a) in net {
        if period.is_some_and(|only| only != p) {
            continue;
        }
        let e = out.entry(contract.clone()).or_default();
        for i in 0..4 {
            e[i] += a[i];
        }
    }
    out
}

#[test]
fn an_annual_fee_is_billed_in_advance_and_recognised_by_day_over_its_term() {
    // Globex adds an annual support plan of 1200 on 15 October; its contract ends on 1 June
    // 2027, so the first term runs 229 of its 365 days and bills that share, in advance, on
    // October's invoice. October earns its 17 days of the term; the rest is deferred revenue
    // that November (open, as of the stream's watermark on the 21st) draws down by its days.
    let s = Scratch::new("revenue-annual");
    let (_, catalog, out) = demo(&s);
    let text = revenue(&catalog, &out);
    assert!(text.contains("in every row: holds"), "{text}");
    let subscription = subscription_lines(&out, "globex-legacy");
    // 1200 × 229 / 365 = 752.876..., rounded once on the line.
    let term = Amount::parse("752.88").unwrap();
    assert_eq!(
        subscription,
        [("2026-10".to_string(), term)],
        "billed once, in advance"
    );
    // The invoice preview says what the line bills: the fee, its term, in advance.
    let preview = std::fs::read_to_string(out.join("invoice_preview.txt")).unwrap();
    assert!(
        preview.lines().any(|l| l
            .contains("· support, 2026-10-15 to 2027-06-01, billed in advance")
            && l.trim_end().ends_with("752.88 USD")),
        "{preview}"
    );
    let net = schedule(&out);
    let row = |period: &str| {
        let key = (
            "globex-legacy".to_string(),
            "subscription:support".to_string(),
            period.to_string(),
            period.to_string(),
        );
        net.get(&key)
            .copied()
            .unwrap_or_else(|| panic!("no {key:?} row in {net:?}"))
    };
    let by_day = |days: i128| Amount(term.0 * days / 229);
    let [billed, recognised, deferred, unbilled] = row("2026-10");
    assert_eq!((billed, unbilled), (term, Amount::ZERO));
    assert_eq!(recognised, by_day(17), "15 to 31 October");
    assert_eq!(deferred, term - by_day(17));
    let [billed, recognised, deferred, unbilled] = row("2026-11");
    assert_eq!((billed, unbilled), (Amount::ZERO, Amount::ZERO));
    assert!(
        recognised > Amount::ZERO && recognised <= by_day(30),
        "{recognised}"
    );
    assert_eq!(deferred, -recognised, "drawn from the liability");
    assert!(!net.keys().any(|k| k.0 == "globex-legacy"
        && k.1 == "subscription:support"
        && k.3.as_str() > "2026-11"));
}

#[test]
fn a_promotional_grant_lowers_revenue_by_what_it_paid_and_opens_no_liability() {
    let s = Scratch::new("revenue-promo");
    let (demo, catalog, out) = demo(&s);
    revenue(&catalog, &out);
    let prepaid_only = schedule(&out);

    // The same events, with a free 100 for initech that burns before its onboarding credit
    // (same priority, earlier expiry) and expires with October.
    let promo_catalog = s.path().join("catalog");
    std::fs::create_dir_all(&promo_catalog).unwrap();
    let text = std::fs::read_to_string(catalog.join("catalog.toml")).unwrap();
    let onboarding = "[[contract.credit]]         # prepaid";
    assert!(text.contains(onboarding));
    let launch = "[[contract.credit]]\nname = \"launch\"\namount = \"100\"\n\
                  granted = \"2026-03-01T00:00:00Z\"\nexpires = \"2026-11-01T00:00:00Z\"\n\
                  promotional = true\n\n";
    std::fs::write(
        promo_catalog.join("catalog.toml"),
        text.replacen(onboarding, &format!("{launch}{onboarding}"), 1),
    )
    .unwrap();
    let promo_out = s.path().join("out");
    run(&demo, &promo_catalog, &promo_out);
    let text = revenue(&promo_catalog, &promo_out);
    assert!(text.contains("in every row: holds"), "{text}");
    let with_promo = schedule(&promo_out);

    // No liability for the free grant; the prepaid one is opened as before.
    assert!(with_promo.keys().all(|k| k.1 != "prepaid credit:launch"));
    assert!(with_promo
        .keys()
        .any(|k| k.1 == "prepaid credit:onboarding"));
    // Initech's invoices bill the same (credit paid them either way), but 100 less of their
    // usage is revenue and 100 less of the prepaid liability is drawn down.
    let (before, after) = (
        per_contract(&prepaid_only, None),
        per_contract(&with_promo, None),
    );
    let hundred = Amount::parse("100").unwrap();
    let (b, a) = (before["initech-2026"], after["initech-2026"]);
    assert_eq!(a[0], b[0], "billed");
    assert_eq!(a[1], b[1] - hundred, "recognised");
    assert_eq!(a[2], b[2] + hundred, "deferred");
    assert_eq!(a[3], b[3], "unbilled");
    let drawn = |net: &Net| -> Amount {
        net.iter()
            .filter(|(k, _)| k.0 == "initech-2026" && k.1 == "prepaid credit")
            .map(|(_, a)| a[0])
            .sum()
    };
    assert_eq!(drawn(&with_promo), drawn(&prepaid_only) + hundred);
    // Every other contract is untouched.
    for (c, totals) in &before {
        if c != "initech-2026" {
            assert_eq!(after.get(c), Some(totals), "{c}");
        }
    }
}

#[test]
fn an_upgrade_bills_the_rest_of_its_term_or_period_once_and_leaves_what_was_billed_alone() {
    // Globex's support plan (1200 a year from 15 October, its contract ending on 1 June 2027)
    // is upgraded to 2400 on 2 November: November bills the increase for the 211 days from
    // the upgrade to the contract's end, 1200 x 211/365; October's invoice stays as it was.
    let s = Scratch::new("revenue-upgrade");
    let (demo, catalog, _) = demo(&s);
    let toml = catalog.join("catalog.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let starts = "starts = \"2026-10-15T00:00:00Z\"\n";
    assert_eq!(
        text.matches(starts).count(),
        1,
        "globex's support fee starts once"
    );
    let upgraded = text.replace(
        starts,
        &format!("{starts}\n[[contract.fee.change]]\nfrom = \"2026-11-02T00:00:00Z\"\namount = \"2400\"\n"),
    );
    // And acme's platform fee, 49 a month, goes to 99 on 11 November: November bills 49 and
    // 50 x 20/30 more for its last 20 days.
    let platform = "name = \"platform\"\namount = \"49\"\n";
    assert_eq!(upgraded.matches(platform).count(), 1);
    let upgraded = upgraded.replace(
        platform,
        &format!("{platform}\n[[contract.fee.change]]\nfrom = \"2026-11-11T00:00:00Z\"\namount = \"99\"\n"),
    );
    std::fs::write(&toml, upgraded).unwrap();
    let out = s.path().join("upgraded");
    run(&demo, &catalog, &out);
    let subscription = subscription_lines(&out, "globex-legacy");
    let p = |s: &str| Amount::parse(s).unwrap();
    assert_eq!(
        subscription,
        [
            ("2026-10".to_string(), p("752.88")),
            ("2026-11".to_string(), p("693.70"))
        ]
    );
    let preview = std::fs::read_to_string(out.join("invoice_preview.txt")).unwrap();
    assert!(
        preview.lines().any(
            |l| l.contains("· support, 2026-11-02 to 2027-06-01, upgrade")
                && l.trim_end().ends_with("693.70 USD")
        ),
        "{preview}"
    );
    assert_eq!(
        subscription_lines(&out, "acme-2026")
            .into_iter()
            .filter(|(p, _)| p.as_str() >= "2026-10")
            .collect::<Vec<_>>(),
        [
            ("2026-10".to_string(), p("49")),
            ("2026-11".to_string(), p("82.33"))
        ]
    );
    for (fee, amount) in [
        ("platform", "49.00"),
        ("platform, 2026-11-11 to 2026-12-01, upgrade", "33.33"),
    ] {
        assert!(
            preview.lines().any(|l| l.contains(&format!("· {fee} "))
                && l.trim_end().ends_with(&format!("{amount} USD"))),
            "{fee}: {preview}"
        );
    }
    let text = revenue(&catalog, &out);
    assert!(text.contains("in every row: holds"), "{text}");
    // November is open (the stream's watermark is on the 21st): the upgrade's days so far are
    // recognised and unbilled, nothing of it is billed yet.
    let net = schedule(&out);
    let key = |period: &str| {
        (
            "globex-legacy".to_string(),
            "subscription:support".to_string(),
            period.to_string(),
            period.to_string(),
        )
    };
    let [billed, recognised, _, unbilled] = net[&key("2026-11")];
    assert_eq!(billed, Amount::ZERO);
    assert!(
        unbilled > Amount::ZERO && unbilled < p("693.70"),
        "{unbilled}"
    );
    assert!(
        recognised > unbilled,
        "the term's own November days too: {recognised}"
    );
    assert_eq!(net[&key("2026-10")][0], p("752.88"));
}

#[test]
fn a_ramp_agreed_at_signing_bills_as_before_and_is_recognised_on_a_straight_line() {
    // Globex's support plan (1200 a year from 15 October; the contract ends on 1 June 2027,
    // 229 days later) steps to 2400 a year on 1 January, a step agreed at signing
    // (`ramp = true`). It bills as it would without the flag: 752.88 in advance in October,
    // the step's increase in January. But its revenue is one price for the 229 days:
    // 1200 x 229/365 + 1200 x 151/365 = 1249.32, so October's 17 days earn 92.74, not 55.89.
    let s = Scratch::new("revenue-ramp");
    let (demo, catalog, out) = demo(&s);
    revenue(&catalog, &out);
    let plain = schedule(&out);
    let toml = catalog.join("catalog.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let starts = "starts = \"2026-10-15T00:00:00Z\"\n";
    assert_eq!(text.matches(starts).count(), 1);
    let text = text.replace(
        starts,
        &format!("{starts}ramp = true\n\n[[contract.fee.change]]\nfrom = \"2027-01-01T00:00:00Z\"\namount = \"2400\"\n"),
    );
    // And acme's platform fee, on a contract now ending with 2026, steps from 49 to 99 on
    // 11 November: billed as an upgrade would be, and listed as the ramp's step.
    let (acme, platform) = (
        "id = \"acme-2026\"\n",
        "name = \"platform\"\namount = \"49\"\n",
    );
    assert_eq!(
        (text.matches(acme).count(), text.matches(platform).count()),
        (1, 1)
    );
    let text = text
        .replace(acme, &format!("{acme}ends = \"2027-01-01T00:00:00Z\"\n"))
        .replace(
            platform,
            &format!("{platform}ramp = true\n\n[[contract.fee.change]]\nfrom = \"2026-11-11T00:00:00Z\"\namount = \"99\"\n"),
        );
    std::fs::write(&toml, text).unwrap();
    let ramp_out = s.path().join("ramp");
    run(&demo, &catalog, &ramp_out);
    let p = |s: &str| Amount::parse(s).unwrap();
    assert_eq!(
        subscription_lines(&ramp_out, "globex-legacy"),
        [("2026-10".to_string(), p("752.88"))],
        "billed as before: the step is in January"
    );
    assert_eq!(
        subscription_lines(&ramp_out, "acme-2026")
            .into_iter()
            .filter(|(p, _)| p.as_str() >= "2026-10")
            .collect::<Vec<_>>(),
        [
            ("2026-10".to_string(), p("49")),
            ("2026-11".to_string(), p("82.33"))
        ]
    );
    let preview = std::fs::read_to_string(ramp_out.join("invoice_preview.txt")).unwrap();
    assert!(
        preview.lines().any(
            |l| l.contains("· platform, 2026-11-11 to 2026-12-01, ramp step")
                && l.trim_end().ends_with("33.33 USD")
        ),
        "{preview}"
    );
    let text = revenue(&catalog, &ramp_out);
    assert!(text.contains("in every row: holds"), "{text}");
    let ramp = schedule(&ramp_out);
    let key = |period: &str| {
        (
            "globex-legacy".to_string(),
            "subscription:support".to_string(),
            period.to_string(),
            period.to_string(),
        )
    };
    // October: billed in advance, so one position, a liability: what was billed less what
    // the straight line earned.
    let [billed, recognised, deferred, unbilled] = ramp[&key("2026-10")];
    assert_eq!(billed, p("752.88"));
    assert!(
        recognised > p("92.743") && recognised < p("92.745"),
        "{recognised}"
    );
    assert_eq!((deferred, unbilled), (billed - recognised, Amount::ZERO));
    assert!(plain[&key("2026-10")][1] < p("55.90"));
    // November, open: the straight line's days so far, drawn from that liability.
    let [billed, recognised, deferred, unbilled] = ramp[&key("2026-11")];
    let plain_november = plain[&key("2026-11")][1];
    assert_eq!((billed, unbilled), (Amount::ZERO, Amount::ZERO));
    assert_eq!(deferred, -recognised);
    // 1249.32 / 1200 x 365 / 229 as much a day as the list price.
    assert!(
        recognised > Amount(plain_november.0 * 1659 / 1000)
            && recognised < Amount(plain_november.0 * 1660 / 1000),
        "{recognised} against {plain_november}"
    );
    // What remains of the plan: the 752.88 billed and January's step (496.44, at list price,
    // not billed yet), less what the straight line has recognised by now.
    let rpo = String::from_utf8_lossy(
        &meterflow_ok(&[
            "revenue",
            "-c",
            path(&catalog),
            "-o",
            path(&ramp_out),
            "--rpo",
        ])
        .stdout,
    )
    .into_owned();
    let globex = rpo
        .lines()
        .skip_while(|l| !l.starts_with("Remaining performance obligations"))
        .find(|l| l.contains("globex / globex-legacy"))
        .unwrap_or_else(|| panic!("{rpo}"));
    let earned = ramp[&key("2026-10")][1] + ramp[&key("2026-11")][1];
    let left = (p("752.88") + p("496.44") - earned)
        .round_to(2, meterflow_schemas::money::Rounding::HalfEven)
        .format_fixed(2);
    let columns: Vec<&str> = globex.split_whitespace().collect();
    assert_eq!(
        columns[columns.len() - 4..],
        [left.as_str(), "0.00", left.as_str(), "USD"],
        "all of it within 12 months, the contract ends in June: {globex}"
    );
    // And the same, exact, in the remaining_obligations table.
    let table = read_table(&ramp_out, "remaining_obligations").unwrap();
    let row = table
        .iter()
        .find(|r| r["contract_id"] == "globex-legacy")
        .unwrap_or_else(|| panic!("{table:?}"));
    let total = Amount::parse(&row["total"]).unwrap();
    assert_eq!(total, p("752.88") + p("496.44") - earned);
    assert_eq!(row["within_12_months"], row["total"]);
    // Every other row is as it was, but acme's fees' (its platform ramps, and the step
    // raises November's line that onboarding shares).
    for (k, a) in &plain {
        let acme_fee = k.0 == "acme-2026" && k.1.starts_with("subscription:");
        if k.1 != "subscription:support" && !acme_fee {
            assert_eq!(ramp.get(k), Some(a), "{k:?}");
        }
    }
}

#[test]
fn a_material_right_takes_its_share_of_the_fees_and_is_recognised_when_redeemed() {
    // Globex got a free 300 for signing, a material right: it pays 300 of October's invoice
    // (1770.28) like any credit, and takes a share of the support plan's 752.88, the
    // contract's only fee, by 300 : 752.88. Redeemed in full in October, it is recognised
    // there, exactly what it took.
    let s = Scratch::new("revenue-material-right");
    let (demo, catalog, out) = demo(&s);
    revenue(&catalog, &out);
    let plain = schedule(&out);
    let toml = catalog.join("catalog.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let marketplace = "[contract.marketplace]      # bought through AWS Marketplace";
    assert_eq!(text.matches(marketplace).count(), 1);
    let right = "[[contract.credit]]\nname = \"signing\"\namount = \"300\"\n\
                 granted = \"2025-06-01T00:00:00Z\"\nmaterial_right = true\n\n";
    std::fs::write(
        &toml,
        text.replace(marketplace, &format!("{right}{marketplace}")),
    )
    .unwrap();
    let right_out = s.path().join("right");
    run(&demo, &catalog, &right_out);
    let text = revenue(&catalog, &right_out);
    assert!(text.contains("in every row: holds"), "{text}");
    assert!(text.contains("material right:signing"), "{text}");
    let net = schedule(&right_out);
    let key = |obligation: &str| {
        (
            "globex-legacy".to_string(),
            obligation.to_string(),
            "2026-10".to_string(),
            "2026-10".to_string(),
        )
    };
    let p = |s: &str| Amount::parse(s).unwrap();
    let [billed, recognised, deferred, unbilled] = net[&key("material right:signing")];
    assert!(billed > p("100") && billed < p("300"), "{billed}");
    assert_eq!(recognised, billed, "redeemed in full in October");
    assert_eq!((deferred, unbilled), (Amount::ZERO, Amount::ZERO));
    // October bills 300 less (the credit), and the right's share comes out of the support
    // plan's: its own revenue is lower by more than its share of the credit.
    let october = |net: &Net| -> Amount {
        net.iter()
            .filter(|(k, _)| k.0 == "globex-legacy" && k.3 == "2026-10")
            .map(|(_, a)| a[0])
            .sum()
    };
    assert_eq!(october(&net), october(&plain) - p("300"));
    let support = |net: &Net| net[&key("subscription:support")][0];
    assert!(support(&net) + billed < support(&plain), "{net:?}");
}
