//! `meterflow forecast` over `gen` data with a known trend (10% a month) and weekly season
//! (weekends at 60%): the backtest of the last three closed months beats the 10% MAPE target and
//! the naive forecast, and the forecast table holds both streams with their intervals.

use std::path::{Path, PathBuf};

use meterflow::reports::tables::read_table;
use meterflow_schemas::money::Amount;
use meterflow_tests::{meterflow_ok, Scratch};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn number_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"))
        + label.len();
    text[at..]
        .split('%')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `meterflow forecast` over a run's output, with `args`.
fn forecast(catalog: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["forecast", "-c", path(catalog), "-o", path(out)];
    all.extend_from_slice(args);
    meterflow_ok(&all)
}

/// Runs the events `gen` wrote into `dir`: returns its catalog and the run's output directory.
fn run_generated(dir: &Path) -> (PathBuf, PathBuf) {
    let (catalog, out) = (dir.join("catalog"), dir.join("out"));
    meterflow_ok(&[
        "run",
        "-q",
        "-i",
        path(&dir.join("events.jsonl")),
        "-c",
        path(&catalog),
        "-o",
        path(&out),
    ]);
    (catalog, out)
}

#[test]
fn the_backtest_beats_ten_percent_and_the_naive_forecast() {
    let s = Scratch::new("forecast");
    let dir = s.path();
    meterflow_ok(&[
        "gen",
        "-o",
        path(dir),
        "--events",
        "120000",
        "--customers",
        "60",
        "--days",
        "180",
        "--start",
        "2026-05-20T00:00:00Z",
        "--growth",
        "0.1",
        "--weekend",
        "0.6",
        "--seed",
        "3",
    ]);
    let (catalog, out) = run_generated(dir);
    let o = forecast(&catalog, &out, &["--backtest", "3"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let (mape, naive) = (
        number_after(&text, "\nMAPE"),
        number_after(&text, "repeated): MAPE"),
    );
    assert!(mape <= 10.0, "{text}");
    assert!(
        mape < naive,
        "the model should beat last month repeated:\n{text}"
    );
    assert!(text.contains("3 periods"), "{text}");
    assert!(!out.join("forecast").exists(), "a backtest writes nothing");

    let o = forecast(&catalog, &out, &["--horizon", "3mo"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let rows = read_table(&out, "forecast").unwrap();
    let months: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["month"].as_str()).collect();
    assert_eq!(months.len(), 3, "{text}");
    for r in &rows {
        let [low, amount, high] = ["low", "amount", "high"].map(|k| Amount::parse(&r[k]).unwrap());
        assert!(low <= amount && amount <= high, "{r:?}");
        assert_eq!(
            r["stream"], "usage",
            "gen without --terms has no contracted revenue"
        );
    }
    assert!(
        rows.iter().any(|r| r["segment"] == "enterprise")
            && rows.iter().any(|r| r["segment"] == "self-serve")
    );
}

/// Per month of the `forecast` table: the forecast revenue, both streams.
fn monthly(out: &Path) -> std::collections::BTreeMap<String, Amount> {
    let mut by_month = std::collections::BTreeMap::new();
    for r in read_table(out, "forecast").unwrap() {
        *by_month.entry(r["month"].clone()).or_default() += Amount::parse(&r["amount"]).unwrap();
    }
    by_month
}

/// 90 days of `gen --terms` data from July into `dir`; returns its catalog file's text.
fn generated_with_terms(dir: &Path) -> String {
    meterflow_ok(&[
        "gen",
        "-o",
        path(dir),
        "--events",
        "20000",
        "--customers",
        "20",
        "--days",
        "90",
        "--start",
        "2026-07-01T00:00:00Z",
        "--terms",
        "--seed",
        "7",
    ]);
    std::fs::read_to_string(dir.join("catalog/catalog.toml")).unwrap()
}

/// The forecast of September and October as of 15 September, per month, after `edit` changed
/// (in `original`, the catalog `gen` wrote) an open-ended contract whose minimum spend bills at
/// least 100 every month, and the pipeline ran again.
fn forecast_after(
    dir: &Path,
    original: &str,
    edit: impl Fn(&mut toml::Table),
) -> std::collections::BTreeMap<String, Amount> {
    let mut toml: toml::Value = toml::from_str(original).unwrap();
    let c = toml["contract"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| {
            c.get("minimum_spend").is_some_and(|m| {
                Amount::parse(m.as_str().unwrap()).unwrap() >= Amount::parse("100").unwrap()
            }) && c.get("ends").is_none()
        })
        .expect("a contract with a minimum spend of 100 or more");
    edit(c.as_table_mut().unwrap());
    std::fs::write(
        dir.join("catalog/catalog.toml"),
        toml::to_string(&toml).unwrap(),
    )
    .unwrap();
    let (catalog, out) = run_generated(dir);
    let o = forecast(
        &catalog,
        &out,
        &["--horizon", "2", "--as-of", "2026-09-15T00:00:00Z"],
    );
    println!("{}", String::from_utf8_lossy(&o.stdout));
    monthly(&out)
}

#[test]
fn a_promotional_grant_lowers_the_forecast_by_what_it_pays_and_a_prepaid_one_does_not() {
    let s = Scratch::new("forecast-credit");
    let dir = s.path();
    let original = generated_with_terms(dir);
    let with_grant = |grant: Option<(&str, bool)>| {
        forecast_after(dir, &original, |c| {
            if let Some((amount, promotional)) = grant {
                let credits = c.entry("credit").or_insert(toml::Value::Array(Vec::new()));
                credits
                    .as_array_mut()
                    .unwrap()
                    .push(toml::Value::Table(toml::toml! {
                        name = "launch"
                        amount = amount
                        granted = "2026-09-01T00:00:00Z"
                        priority = 0
                        promotional = promotional
                    }));
            }
        })
    };
    let without = with_grant(None);
    assert_eq!(
        without.keys().collect::<Vec<_>>(),
        ["2026-09", "2026-10"],
        "{without:?}"
    );
    // Prepaid credit pays for revenue: the forecast does not move.
    assert_eq!(with_grant(Some(("150", false))), without);
    // A free 150 granted for September on: its invoice (at least 100) takes all it can in
    // September, the rest in October.
    let with = with_grant(Some(("150", true)));
    let lower = |m: &str| without[m] - with[m];
    let september = lower("2026-09");
    assert!(
        september >= Amount::parse("100").unwrap() && september <= Amount::parse("150").unwrap(),
        "September: {september}"
    );
    assert_eq!(september + lower("2026-10"), Amount::parse("150").unwrap());
}

#[test]
fn a_contract_past_its_end_is_forecast_at_its_renewal_likelihood() {
    let s = Scratch::new("forecast-renewal");
    let dir = s.path();
    let original = generated_with_terms(dir);
    let with_renewal = |renewal: Option<&str>| {
        forecast_after(dir, &original, |c| {
            c.insert("ends".into(), "2026-10-01T00:00:00Z".into());
            if let Some(likelihood) = renewal {
                c.insert(
                    "renewal".into(),
                    toml::Value::Table(toml::toml! {
                        term_months = 12
                        likelihood = likelihood
                    }),
                );
            }
        })
    };
    let open_ended = forecast_after(dir, &original, |_| {});
    let ending = with_renewal(None);
    // September is inside its term whatever happens after.
    assert_eq!(ending["2026-09"], open_ended["2026-09"]);
    // October: without a renewal it is not forecast at all; renewed for sure, as if it ran on.
    let october = open_ended["2026-10"] - ending["2026-10"];
    assert!(october >= Amount::parse("100").unwrap(), "{october}");
    assert_eq!(with_renewal(Some("1"))["2026-10"], open_ended["2026-10"]);
    // At 50%, half of it.
    let half = with_renewal(Some("0.5"))["2026-10"] - ending["2026-10"];
    let want = Amount(october.0 / 2);
    assert!(
        (half - want).0.abs() <= Amount::parse("0.000001").unwrap().0,
        "{half} against half of {october}"
    );
}

#[test]
fn contracted_revenue_is_fees_and_minimums_and_usage_adds_what_is_above() {
    let s = Scratch::new("forecast-terms");
    let dir = s.path();
    meterflow_ok(&[
        "gen",
        "-o",
        path(dir),
        "--events",
        "40000",
        "--customers",
        "30",
        "--days",
        "120",
        "--start",
        "2026-07-01T00:00:00Z",
        "--terms",
        "--seed",
        "5",
    ]);
    let (catalog, out) = run_generated(dir);
    forecast(&catalog, &out, &["--horizon", "2"]);
    let rows = read_table(&out, "forecast").unwrap();
    // Contracted per month: what each contract's invoice bills without usage, from the catalog:
    // its fees less the invoice-wide discounts in effect that month, raised to its minimum spend.
    let toml: toml::Value =
        toml::from_str(&std::fs::read_to_string(catalog.join("catalog.toml")).unwrap()).unwrap();
    let amount = |v: &toml::Value| Amount::parse(v.as_str().unwrap()).unwrap();
    let fixed = |month_start: &str| -> Amount {
        let mut total = Amount::ZERO;
        for c in toml["contract"].as_array().unwrap() {
            let list = |k: &str| {
                c.get(k)
                    .and_then(|f| f.as_array())
                    .cloned()
                    .unwrap_or_default()
            };
            // A fee with a term is billed in the months its terms start in (the contract's
            // start month, then every `term_months`), the others every month.
            let month_index =
                |t: &str| t[..4].parse::<i64>().unwrap() * 12 + t[5..7].parse::<i64>().unwrap();
            let since_start = month_index(month_start) - month_index(c["starts"].as_str().unwrap());
            let due = |f: &toml::Value| {
                f.get("term_months")
                    .is_none_or(|m| since_start >= 0 && since_start % m.as_integer().unwrap() == 0)
            };
            let fees = list("fee");
            let mut net: Amount = fees
                .iter()
                .filter(|f| due(f))
                .map(|f| amount(&f["amount"]))
                .sum();
            // A term's fee is outside the month's minimum spend.
            let in_advance: Amount = fees
                .iter()
                .filter(|f| f.get("term_months").is_some() && due(f))
                .map(|f| amount(&f["amount"]))
                .sum();
            for d in list("discount") {
                let applies = d.get("sku").is_none()
                    && d.get("from")
                        .is_none_or(|f| f.as_str().unwrap() <= month_start)
                    && d.get("until")
                        .is_none_or(|u| month_start < u.as_str().unwrap());
                if applies && net > Amount::ZERO {
                    // gen writes invoice-wide discounts as fixed amounts only.
                    let off = amount(d.get("amount").expect("a fixed invoice discount")).min(net);
                    net -= off;
                }
            }
            let own = net - in_advance;
            total += c.get("minimum_spend").map_or(own, |m| own.max(amount(m))) + in_advance;
        }
        total
    };
    let mut seen_fee_and_minimum = false;
    for c in toml["contract"].as_array().unwrap() {
        seen_fee_and_minimum |= c.get("fee").is_some() && c.get("minimum_spend").is_some();
    }
    assert!(
        seen_fee_and_minimum,
        "a contract whose minimum spend covers its fee"
    );
    for month in rows
        .iter()
        .map(|r| r["month"].clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let contracted: Amount = rows
            .iter()
            .filter(|r| r["month"] == month && r["stream"] == "contracted")
            .map(|r| Amount::parse(&r["amount"]).unwrap())
            .sum();
        let fixed = fixed(&format!("{month}-01T00:00:00Z"));
        assert!(fixed > Amount::ZERO);
        assert_eq!(contracted, fixed, "{month}");
    }
}
