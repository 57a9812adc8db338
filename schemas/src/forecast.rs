//! The two-stream revenue forecast (docs/forecast.md):
//!
//! 1. **Contracted**: what contracts commit to per month, whatever the usage: subscription fees
//!    and the minimum spend, for the months a contract runs (past `ends` only as its
//!    `[contract.renewal]` assumes, weighted by its likelihood), prorated and net of discounts
//!    as the invoice would bill them.
//! 2. **Usage**: daily usage per SKU and customer segment, forecast with additive Holt-Winters
//!    (level, trend, weekly season; smoothing picked by the least one-step squared error), spread
//!    over the segment's contracts by their share of the last 28 days, and priced per contract
//!    through its rate card's price for the month (tiers apply), then through the contract's
//!    invoice: what it adds above the contracted part, after discounts and the maximum spend.
//!    Peak and distinct-count meters carry their last month forward.
//!
//! Both are revenue, so prepaid credit does not lower them (it pays for what they bill), but
//! **promotional credit** does: each contract's grants are burnt in pricing's order, from what
//! they held at the start of the first month, against each month's forecast invoice; what the
//! promotional grants pay of it lowers the contracted and the usage part in proportion (as the
//! revenue schedule allocates it).
//!
//! Statistics run in `f64` on quantities; money is priced from the forecast quantities with the
//! exact pricing code. The 80% interval is ±1.2816 σ·√(Σ steps ahead) around each month's
//! forecast quantity, σ being the model's one-step error, priced at its bounds.

use std::collections::BTreeMap;

use crate::catalog::{Catalog, Contract, ContractIdx, SkuIdx, TermFee};
use crate::money::{minor_unit_digits, Amount, Quantity, Rounding, UnitPrice};
use crate::pricing::invoice::{burn_split, net_before_credit};
use crate::pricing::{price_period, Segment};
use crate::time::{EventTime, PeriodUnit};

const DAY: i64 = 86_400_000;
const SEASON: usize = 7;
/// The standard normal quantile of 90%: a two-sided 80% interval.
const Z80: f64 = 1.2816;

/// A fitted additive Holt-Winters model of a daily series with a weekly season.
#[derive(Clone, Debug)]
pub struct HoltWinters {
    level: f64,
    trend: f64,
    season: [f64; SEASON],
    /// Days seen (the next forecast is for day `n`).
    n: usize,
    /// Root mean squared one-step error.
    pub sigma: f64,
}

impl HoltWinters {
    fn run(y: &[f64], alpha: f64, beta: f64, gamma: f64) -> HoltWinters {
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, second) = (mean(&y[..SEASON]), mean(&y[SEASON..2 * SEASON]));
        let mut season = [0.0; SEASON];
        for (i, s) in season.iter_mut().enumerate() {
            *s = y[i] - first;
        }
        let (mut level, mut trend) = (first, (second - first) / SEASON as f64);
        let (mut sse, mut count) = (0.0, 0usize);
        for (t, &v) in y.iter().enumerate().skip(SEASON) {
            let s = season[t % SEASON];
            let e = v - (level + trend + s);
            sse += e * e;
            count += 1;
            let new_level = alpha * (v - s) + (1.0 - alpha) * (level + trend);
            trend = beta * (new_level - level) + (1.0 - beta) * trend;
            season[t % SEASON] = gamma * (v - new_level) + (1.0 - gamma) * s;
            level = new_level;
        }
        HoltWinters {
            level,
            trend,
            season,
            n: y.len(),
            sigma: (sse / count.max(1) as f64).sqrt(),
        }
    }

    /// Fits a series of at least two weeks; shorter ones get a flat model at their mean.
    pub fn fit(y: &[f64]) -> HoltWinters {
        if y.len() < 2 * SEASON {
            let mean = if y.is_empty() {
                0.0
            } else {
                y.iter().sum::<f64>() / y.len() as f64
            };
            let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / y.len().max(1) as f64;
            return HoltWinters {
                level: mean,
                trend: 0.0,
                season: [0.0; SEASON],
                n: y.len(),
                sigma: var.sqrt(),
            };
        }
        let mut best: Option<HoltWinters> = None;
        for alpha in [0.05, 0.1, 0.2, 0.3, 0.5] {
            for beta in [0.0, 0.01, 0.03, 0.1] {
                for gamma in [0.05, 0.1, 0.3] {
                    let m = HoltWinters::run(y, alpha, beta, gamma);
                    if best.as_ref().is_none_or(|b| m.sigma < b.sigma) {
                        best = Some(m);
                    }
                }
            }
        }
        best.expect("a grid")
    }

    /// The forecast `h` days after the last one seen (`h` ≥ 1), never below zero.
    pub fn forecast(&self, h: usize) -> f64 {
        (self.level + h as f64 * self.trend + self.season[(self.n + h - 1) % SEASON]).max(0.0)
    }
}

/// Net billable usage of a contract's SKU on one day (UTC), and its net events.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DayUsage {
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    /// The start of the day.
    pub day: EventTime,
    pub quantity: Quantity,
    pub events: i64,
}

/// One month of one stream: a SKU and segment's usage revenue, or a segment's contracted
/// revenue (`sku` empty).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForecastKey {
    pub month: String,
    /// `contracted` or `usage`.
    pub stream: &'static str,
    pub sku: String,
    pub segment: String,
    pub currency: String,
}

/// A row of the `forecast` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forecasted {
    pub computed_at: EventTime,
    pub run_id: String,
    pub as_of: EventTime,
    pub key: ForecastKey,
    pub forecast: Forecast,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forecast {
    /// Forecast quantity (usage stream; zero for contracted).
    pub quantity: Quantity,
    /// The usage priced as its usage lines would bill it, before the minimum and maximum spend
    /// (what a backtest compares with the billed usage lines).
    pub priced: Amount,
    pub amount: Amount,
    pub low: Amount,
    pub high: Amount,
}

fn to_quantity(v: f64) -> Quantity {
    Quantity((v.max(0.0) * Quantity::SCALE_ONE as f64).round() as i128)
}

/// `amount × part ÷ whole` (zero when `whole` is).
fn share(amount: Amount, part: Amount, whole: Amount) -> Amount {
    if whole <= Amount::ZERO {
        return Amount::ZERO;
    }
    crate::revenue::share(amount, part, whole)
}

fn price(
    catalog: &Catalog,
    contract: ContractIdx,
    sku: SkuIdx,
    at: EventTime,
    q: Quantity,
    events: i64,
) -> Option<Amount> {
    let c = &catalog.contracts[contract.ix()];
    let p = catalog.price_for(c, sku, None, at).ok()?;
    let model = &catalog.prices[p.ix()].model;
    Some(
        price_period(&[Segment {
            model,
            quantity: q,
            events,
            fee_adjustment: Amount::ZERO,
        }])
        .total(),
    )
}

/// What the forecast carries in from the invoices before its first month.
#[derive(Clone, Debug, Default)]
pub struct Carried {
    /// The last month's billed quantity of each contract's peak and distinct-count meters.
    pub meters: BTreeMap<(ContractIdx, SkuIdx), Quantity>,
    /// What each of a contract's credit grants held at the start of the first month, in the
    /// catalog's order; a contract not here holds its grants in full.
    pub credit_left: BTreeMap<ContractIdx, Vec<Amount>>,
}

/// The forecast of the `months` invoice periods from the one holding `as_of` (usage before
/// `as_of` is known; the rest of its month and the months after are forecast). `usage`: daily
/// usage of every contract (days from `as_of` on are ignored).
pub fn forecast(
    catalog: &Catalog,
    unit: PeriodUnit,
    usage: &[DayUsage],
    carried: &Carried,
    as_of: EventTime,
    months: usize,
    rounding: Rounding,
) -> BTreeMap<ForecastKey, Forecast> {
    let as_of_day = EventTime(as_of.0.div_euclid(DAY) * DAY);
    let known: Vec<&DayUsage> = usage.iter().filter(|u| u.day < as_of_day).collect();
    let Some(first_day) = known.iter().map(|u| u.day).min() else {
        return BTreeMap::new();
    };
    let days = ((as_of_day.0 - first_day.0) / DAY) as usize;
    let segment = |c: ContractIdx| {
        catalog.customers[catalog.contracts[c.ix()].customer.ix()]
            .segment
            .clone()
    };
    // Daily series per SKU and segment; per contract, the last 28 days (shares) and this month.
    let current = unit.period_of(as_of_day);
    let mut series: BTreeMap<(SkuIdx, String), Vec<f64>> = BTreeMap::new();
    let mut recent: BTreeMap<(SkuIdx, String), BTreeMap<ContractIdx, (f64, i64)>> = BTreeMap::new();
    let mut so_far: BTreeMap<(ContractIdx, SkuIdx), (Quantity, i64)> = BTreeMap::new();
    for u in &known {
        let key = (u.sku, segment(u.contract));
        let q = u.quantity.0 as f64 / Quantity::SCALE_ONE as f64;
        let s = series.entry(key.clone()).or_insert_with(|| vec![0.0; days]);
        s[((u.day.0 - first_day.0) / DAY) as usize] += q;
        if u.day.0 >= as_of_day.0 - 28 * DAY {
            let r = recent
                .entry(key)
                .or_default()
                .entry(u.contract)
                .or_default();
            r.0 += q;
            r.1 += u.events;
        }
        let p = unit.period_of(u.day);
        if p == current {
            let e = so_far.entry((u.contract, u.sku)).or_default();
            e.0 += u.quantity;
            e.1 += u.events;
        }
    }
    let mut out: BTreeMap<ForecastKey, Forecast> = BTreeMap::new();
    type Priced = (SkuIdx, String, Quantity, [Amount; 3]);
    let mut by_contract: BTreeMap<(ContractIdx, crate::time::Period), Vec<Priced>> =
        BTreeMap::new();
    // The months: their start, end, and the days of each still to forecast (steps ahead).
    let mut month_starts = vec![current];
    for _ in 1..months {
        let last = *month_starts.last().expect("one");
        month_starts.push(unit.period_of(unit.end_of(last)));
    }
    // How each contract runs in each month (its renewals included), once.
    type Month = (ContractIdx, crate::time::Period);
    let mut running: BTreeMap<Month, Run> = BTreeMap::new();
    for (i, c) in catalog.contracts.iter().enumerate() {
        for p in &month_starts {
            if let Some(run) = runs(c, p.0, unit.end_of(*p)) {
                running.insert((ContractIdx(i as u32), *p), run);
            }
        }
    }
    for ((sku, seg), y) in &series {
        let additive = catalog.skus[sku.ix()].aggregation.is_additive();
        let model = HoltWinters::fit(y);
        let shares = recent
            .get(&(*sku, seg.clone()))
            .cloned()
            .unwrap_or_default();
        let total: f64 = shares.values().map(|(q, _)| q).sum();
        for p in &month_starts {
            let (start, end) = (p.0, unit.end_of(*p));
            let steps: Vec<usize> = (0..((end.0 - start.0) / DAY) as usize)
                .map(|d| start.0 + d as i64 * DAY)
                .filter(|t| *t >= as_of_day.0)
                .map(|t| ((t - as_of_day.0) / DAY) as usize + 1)
                .collect();
            let mean: f64 = steps.iter().map(|h| model.forecast(*h)).sum();
            let spread = Z80 * model.sigma * (steps.iter().sum::<usize>() as f64).sqrt();
            let bounds = [mean, (mean - spread).max(0.0), mean + spread];
            for (contract, (q28, e28)) in &shares {
                if !running.contains_key(&(*contract, *p)) {
                    continue;
                }
                let share = if total > 0.0 { q28 / total } else { 0.0 };
                let (known_q, known_e) = if *p == current {
                    so_far.get(&(*contract, *sku)).copied().unwrap_or_default()
                } else {
                    Default::default()
                };
                let mut priced = [Amount::ZERO; 3];
                let mut quantity = Quantity::ZERO;
                for (i, b) in bounds.iter().enumerate() {
                    let q = if additive {
                        known_q + to_quantity(b * share)
                    } else {
                        carried
                            .meters
                            .get(&(*contract, *sku))
                            .copied()
                            .unwrap_or_default()
                    };
                    let per_event = if *q28 > 0.0 { *e28 as f64 / q28 } else { 0.0 };
                    let events = known_e as f64
                        + (q.0 - known_q.0).max(0) as f64 / Quantity::SCALE_ONE as f64 * per_event;
                    priced[i] = price(catalog, *contract, *sku, start, q, events.round() as i64)
                        .unwrap_or_default();
                    if i == 0 {
                        quantity = q;
                    }
                }
                by_contract.entry((*contract, *p)).or_default().push((
                    *sku,
                    seg.clone(),
                    quantity,
                    priced,
                ));
            }
        }
    }
    // Per contract and month, each priced through the contract's invoice (before credits and
    // tax): contracted revenue is what it bills without usage (fees and the minimum spend,
    // prorated to the part of the month the contract runs, net of the discounts that take from
    // them); usage revenue is what usage adds to that, spread over the SKUs by their priced usage.
    let invoice =
        |contract: ContractIdx, p: crate::time::Period, usage: &BTreeMap<SkuIdx, Amount>| {
            let c = &catalog.contracts[contract.ix()];
            let digits = minor_unit_digits(catalog.currency_of(contract));
            let end = unit.end_of(p);
            let ends = running.get(&(contract, p)).map_or(c.ends, |r| r.ends);
            // Terms starting in the month bill their fee in advance; renewals carry them on.
            let term_fees = c
                .terms
                .term_fees
                .iter()
                .map(|f| {
                    TermFee {
                        until: ends,
                        ..f.clone()
                    }
                    .due(p.0, end, false)
                })
                .sum();
            let span = (c.starts, ends);
            net_before_credit(
                &c.terms,
                (p.0, end),
                (span, term_fees),
                usage,
                digits,
                rounding,
            )
        };
    let contracted: BTreeMap<Month, Amount> = running
        .keys()
        .map(|&(contract, p)| ((contract, p), invoice(contract, p, &BTreeMap::new())))
        .collect();
    let weights = |m: &Month| running.get(m).map_or_else(Default::default, |r| r.weights);
    // What usage adds to each invoice, at the forecast and its bounds.
    let mut variable: BTreeMap<Month, [Amount; 3]> = BTreeMap::new();
    for (&(contract, p), skus) in &by_contract {
        let fixed = contracted.get(&(contract, p)).copied().unwrap_or_default();
        let digits = minor_unit_digits(catalog.currency_of(contract));
        let v = variable.entry((contract, p)).or_default();
        for (i, v) in v.iter_mut().enumerate() {
            let mut usage: BTreeMap<SkuIdx, Amount> = BTreeMap::new();
            for (sku, _, _, priced) in skus {
                *usage.entry(*sku).or_default() += priced[i].round_to(digits, rounding);
            }
            *v = (invoice(contract, p, &usage) - fixed).max(Amount::ZERO);
        }
    }
    // Both parts at the weight each bound gives the month (renewals).
    let weighted = |m: Month| -> [(Amount, Amount); 3] {
        let fixed = contracted.get(&m).copied().unwrap_or_default();
        let var = variable.get(&m).copied().unwrap_or_default();
        let w = weights(&m);
        std::array::from_fn(|i| (fixed.times_fraction(w[i]), var[i].times_fraction(w[i])))
    };
    let promotional = promotional_credit(catalog, &carried.credit_left, &month_starts, |m| {
        weighted(m).map(|(fixed, var)| fixed + var)
    });
    // What each bound of a month earns of its contracted part and of its usage part: what
    // promotional credit pays of the invoice comes off both in proportion.
    let earned = |m: Month| -> [(Amount, Amount); 3] {
        let parts = weighted(m);
        let free = promotional.get(&m).copied().unwrap_or_default();
        std::array::from_fn(|i| {
            let (fixed, var) = parts[i];
            let of_fixed = share(free[i], fixed, fixed + var);
            (fixed - of_fixed, var - (free[i] - of_fixed))
        })
    };
    for (&(contract, p), &fixed) in &contracted {
        if fixed == Amount::ZERO {
            continue;
        }
        let key = ForecastKey {
            month: unit.label(p),
            stream: "contracted",
            sku: String::new(),
            segment: segment(contract),
            currency: catalog.currency_of(contract).to_string(),
        };
        let [amount, low, high] = earned((contract, p)).map(|(fixed, _)| fixed);
        let f = out.entry(key).or_default();
        f.amount += amount;
        f.low += low;
        f.high += high;
    }
    for ((contract, p), skus) in by_contract {
        let earned = earned((contract, p)).map(|(_, var)| var);
        let weight = weights(&(contract, p))[0];
        for (sku, seg, quantity, priced) in &skus {
            let key = ForecastKey {
                month: unit.label(p),
                stream: "usage",
                sku: catalog.skus[sku.ix()].id.clone(),
                segment: seg.clone(),
                currency: catalog.currency_of(contract).to_string(),
            };
            let f = out.entry(key).or_default();
            f.quantity += Quantity(quantity.0 * weight.0 / Quantity::SCALE_ONE);
            f.priced += priced[0].times_fraction(weight);
            // Spread by the SKUs' share of the forecast, so each row's low ≤ amount ≤ high.
            let total: Amount = skus.iter().map(|(.., a)| a[0]).sum();
            f.amount += share(earned[0], priced[0], total);
            f.low += share(earned[1], priced[0], total);
            f.high += share(earned[2], priced[0], total);
        }
    }
    out
}

/// How a contract runs in the period `[start, end)`, counting the renewals the catalog assumes
/// past its `ends` (`[contract.renewal]`).
struct Run {
    /// The end its invoice for the period is prorated to: its own, or that of the last
    /// renewal term the period reaches into.
    ends: Option<EventTime>,
    /// What its amounts count at, per bound (forecast, low, high): 1 in its own term; in its
    /// k-th renewal, the likelihood to the k-th power for the forecast, 0 for the low bound (it
    /// does not renew) and 1 for the high one. A period partly in one term and partly in
    /// another counts each part by its length.
    weights: [UnitPrice; 3],
}

/// `None` when the contract does not run in the period at all, renewals included.
fn runs(c: &Contract, start: EventTime, end: EventTime) -> Option<Run> {
    let one = 10i128.pow(UnitPrice::SCALE);
    let overlap = |from: EventTime, to: Option<EventTime>| -> i128 {
        let to = to.map_or(end, |t| t.min(end));
        i128::from((to.0 - from.max(start).0).max(0))
    };
    let own = overlap(c.starts, c.ends);
    let mut ends = c.ends;
    // Per bound: the weighted time (ms × weight) and the time the contract runs.
    let mut weighted = [own * one; 3];
    let mut total = own;
    if let (Some(first), Some(r)) = (c.ends, c.renewal) {
        let mut chance = one;
        let mut k = 0;
        loop {
            let from = first.plus_months(k * r.term_months);
            if from >= end {
                break;
            }
            k += 1;
            let to = first.plus_months(k * r.term_months);
            chance = chance * r.likelihood.0 / one;
            let part = overlap(from.max(c.starts), Some(to));
            if part > 0 {
                weighted[0] += part * chance;
                weighted[2] += part * one;
                total += part;
                ends = Some(to);
            }
        }
    }
    (total > 0).then(|| Run {
        ends,
        weights: weighted.map(|w| UnitPrice(w / total)),
    })
}

/// What each contract's promotional grants pay of its forecast invoices, per month, at the
/// forecast and its bounds: its grants burnt in pricing's order from what they held at the
/// start of the first month (`left`), month by month, against `wanted` (what the invoice bills
/// before credit, per bound). Contracts with no promotional grant are left out.
fn promotional_credit(
    catalog: &Catalog,
    left: &BTreeMap<ContractIdx, Vec<Amount>>,
    months: &[crate::time::Period],
    wanted: impl Fn((ContractIdx, crate::time::Period)) -> [Amount; 3],
) -> BTreeMap<(ContractIdx, crate::time::Period), [Amount; 3]> {
    let mut out = BTreeMap::new();
    for (i, c) in catalog.contracts.iter().enumerate() {
        let grants = &c.terms.credits;
        if !grants.iter().any(|g| g.promotional) {
            continue;
        }
        let contract = ContractIdx(i as u32);
        let start = left
            .get(&contract)
            .cloned()
            .unwrap_or_else(|| grants.iter().map(|g| g.amount).collect());
        let mut balances = [start.clone(), start.clone(), start];
        for p in months {
            let want = wanted((contract, *p));
            let free: [Amount; 3] = std::array::from_fn(|b| {
                burn_split(grants, &mut balances[b], p.0, want[b].max(Amount::ZERO)).1
            });
            if free.iter().any(|f| *f != Amount::ZERO) {
                out.insert((contract, *p), free);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A week-seasonal series with a trend and deterministic noise.
    fn series(days: usize, growth_per_day: f64) -> Vec<f64> {
        (0..days)
            .map(|d| {
                let week = if d % 7 >= 5 { 0.6 } else { 1.0 };
                let noise = 1.0 + 0.05 * (((d * 7919) % 13) as f64 / 6.0 - 1.0);
                1000.0 * (1.0 + growth_per_day).powi(d as i32) * week * noise
            })
            .collect()
    }

    #[test]
    fn holt_winters_follows_a_trend_and_a_week() {
        let y = series(150, 0.003);
        let model = HoltWinters::fit(&y[..120]);
        let (mut err, mut total) = (0.0, 0.0);
        for h in 1..=30 {
            err += (model.forecast(h) - y[119 + h]).abs();
            total += y[119 + h];
        }
        assert!(err / total < 0.05, "monthly error {:.3}", err / total);
        // Weekends come out lower than weekdays.
        let day = |weekday: usize| (1..=7).find(|h| (119 + h) % 7 == weekday).unwrap();
        let (sat, mon) = (model.forecast(day(5)), model.forecast(day(0)));
        assert!(sat < mon * 0.8, "{sat} vs {mon}");
    }

    /// A contract starting mid-November with a 300 monthly fee, 10% off the invoice and
    /// `extra` terms; 10 tokens (at 1 USD) a day so far. The forecast of November and December
    /// as of 20 November, with `credit_left`.
    fn mid_november(extra: &str, credit_left: &[Amount]) -> BTreeMap<ForecastKey, Forecast> {
        mid_november_until("", extra, credit_left)
    }

    /// As [`mid_november`], the contract ending at `ends` (RFC 3339; empty: open-ended).
    fn mid_november_until(
        ends: &str,
        extra: &str,
        credit_left: &[Amount],
    ) -> BTreeMap<ForecastKey, Forecast> {
        let ends = if ends.is_empty() {
            String::new()
        } else {
            format!("ends = \"{ends}\"\n")
        };
        let text = crate::fixtures::ONE_CONTRACT.replace(
            "starts = \"2026-01-01T00:00:00Z\"",
            &format!(
                "starts = \"2026-11-16T00:00:00Z\"\n{ends}\
                 [[contract.fee]]\nname = \"platform\"\namount = \"300\"\n\
                 [[contract.discount]]\nname = \"launch\"\npercent = \"10\"\n{extra}"
            ),
        );
        let catalog = crate::catalog::from_toml_str(&text).unwrap();
        let t = |s: &str| EventTime::parse_rfc3339(s).unwrap();
        let usage: Vec<DayUsage> = (16..20)
            .map(|d| DayUsage {
                contract: ContractIdx(0),
                sku: SkuIdx(0),
                day: t(&format!("2026-11-{d}T00:00:00Z")),
                quantity: Quantity::from_units(10),
                events: 1,
            })
            .collect();
        let mut carried = Carried::default();
        if !credit_left.is_empty() {
            carried
                .credit_left
                .insert(ContractIdx(0), credit_left.to_vec());
        }
        forecast(
            &catalog,
            PeriodUnit::Month,
            &usage,
            &carried,
            t("2026-11-20T00:00:00Z"),
            2,
            Rounding::HalfEven,
        )
    }

    fn get(f: &BTreeMap<ForecastKey, Forecast>, month: &str, stream: &str) -> Forecast {
        f.iter()
            .find(|(k, _)| k.month == month && k.stream == stream)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {stream} row for {month}: {f:?}"))
    }

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn both_streams_are_priced_through_the_invoice_prorated_and_discounted() {
        let f = mid_november("", &[]);
        // November: half the month's fee (150), less 10%.
        assert_eq!(get(&f, "2026-11", "contracted").amount, a("135"));
        assert_eq!(get(&f, "2026-12", "contracted").amount, a("270"));
        // Usage: 40 known and 11 days at 10 to come; it earns 90% of its price.
        let nov = get(&f, "2026-11", "usage");
        assert_eq!((nov.priced, nov.amount), (a("150"), a("135")));
        let dec = get(&f, "2026-12", "usage");
        assert_eq!((dec.priced, dec.amount), (a("310"), a("279")));
    }

    #[test]
    fn promotional_credit_lowers_the_forecast_and_prepaid_credit_does_not() {
        // A free welcome grant (150 of 200 left) burns first, then a prepaid 1 000.
        let grants = "[[contract.credit]]\nname = \"welcome\"\namount = \"200\"\n\
                      granted = \"2026-11-01T00:00:00Z\"\npromotional = true\n\
                      [[contract.credit]]\nname = \"prepaid\"\namount = \"1000\"\n\
                      granted = \"2026-11-01T00:00:00Z\"\npriority = 1";
        let f = mid_november(grants, &[a("150"), a("1000")]);
        // November bills 135 + 135 before credit: the welcome grant's 150 pays half of each.
        let (fixed, usage) = (
            get(&f, "2026-11", "contracted"),
            get(&f, "2026-11", "usage"),
        );
        assert_eq!((fixed.amount, usage.amount), (a("60"), a("60")));
        assert_eq!(usage.priced, a("150"), "the usage's price is not lowered");
        for r in [fixed, usage] {
            assert!(r.low <= r.amount && r.amount <= r.high, "{r:?}");
        }
        // December: the welcome grant is spent; the prepaid grant pays it, which is revenue.
        assert_eq!(get(&f, "2026-12", "contracted").amount, a("270"));
        assert_eq!(get(&f, "2026-12", "usage").amount, a("279"));
        // A welcome 400 in full, left to the forecast: all of November's 270, then 130 of
        // December's 549.
        let f = mid_november(&grants.replace("\"200\"", "\"400\""), &[]);
        let total = |m: &str| get(&f, m, "contracted").amount + get(&f, m, "usage").amount;
        assert_eq!((total("2026-11"), total("2026-12")), (a("0"), a("419")));
        // Prepaid only: the forecast is the one without credit.
        let prepaid = "[[contract.credit]]\nname = \"prepaid\"\namount = \"1000\"\n\
                       granted = \"2026-11-01T00:00:00Z\"";
        assert_eq!(mid_november(prepaid, &[]), mid_november("", &[]));
    }

    #[test]
    fn a_contract_that_renews_is_forecast_past_its_end_at_its_likelihood() {
        let renewal = "[contract.renewal]\nterm_months = 12\nlikelihood = \"0.8\"";
        // Ending with November, renewed for December at 80%: the forecast is 80% of what it
        // bills if it renews, the low bound what it bills if not (nothing), the high bound all.
        let f = mid_november_until("2026-12-01T00:00:00Z", renewal, &[]);
        let dec = get(&f, "2026-12", "contracted");
        assert_eq!(
            (dec.amount, dec.low, dec.high),
            (a("216"), a("0"), a("270"))
        );
        let dec = get(&f, "2026-12", "usage");
        assert_eq!(
            (dec.amount, dec.low, dec.high),
            (a("223.2"), a("0"), a("279"))
        );
        assert_eq!(
            dec.priced,
            a("248"),
            "80% of the 310 December's usage is priced at"
        );
        // November is its own term: certain.
        let nov = get(&f, "2026-11", "contracted");
        assert_eq!(
            (nov.amount, nov.low, nov.high),
            (a("135"), a("135"), a("135"))
        );
        // Ending mid-December: 15 days certain and 16 days at 80%, of a whole month's 270.
        let f = mid_november_until("2026-12-16T00:00:00Z", renewal, &[]);
        let dec = get(&f, "2026-12", "contracted");
        let near = |got: Amount, want: &str| {
            assert!(
                (got - a(want)).0.abs() < a("0.000001").0,
                "{got} against {want}"
            );
        };
        near(dec.low, "130.645161290"); // 270 × 15/31
        near(dec.amount, "242.129032258"); // 270 × (15 + 16 × 0.8)/31
        assert_eq!(dec.high, a("270"));
        // Without a renewal the contract is not forecast past its end.
        let f = mid_november_until("2026-12-01T00:00:00Z", "", &[]);
        assert!(f.keys().all(|k| k.month == "2026-11"), "{f:?}");
    }

    #[test]
    fn a_short_series_is_flat_at_its_mean() {
        let m = HoltWinters::fit(&[10.0, 12.0, 14.0]);
        assert_eq!(m.forecast(5), 12.0);
    }
}
