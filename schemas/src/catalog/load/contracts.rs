//! Contracts: who pays for what under which rate card, with their terms (fees, discounts,
//! spend bounds, credits) and entitlements, checked against the catalog's customers, SKUs and
//! rate cards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::format::*;
use crate::catalog::model::*;
use crate::entitlement::Entitlement;
use crate::money::{minor_unit_digits, Amount, Quantity, Rounding, UnitPrice, AMOUNT_SCALE};
use crate::time::EventTime;

/// A contract's fees, discounts and spend bounds, checked against its currency's minor unit;
/// `span`: when the contract starts and ends (its term fees' terms run from its start).
fn contract_terms(
    l: &mut Loader,
    file: &Path,
    entry: &str,
    c: &ContractDef,
    currency: Option<&str>,
    span: Option<(EventTime, Option<EventTime>)>,
) -> ContractTerms {
    let digits = currency.map_or(AMOUNT_SCALE, minor_unit_digits);
    let money = |l: &mut Loader, key: &str, text: &DecimalText| -> Option<Amount> {
        let a = l.decimal(file, entry, key, text, Amount::parse_price)?;
        if a.is_negative() {
            l.err(
                file,
                entry,
                format!("{key} {a} is negative"),
                format!("write {key} as a positive amount"),
            );
            return None;
        }
        if a.round_to(digits, Rounding::Down) != a {
            l.err(
                file,
                entry,
                format!(
                    "{key} {a} has more fractional digits than {} allows ({digits})",
                    currency.unwrap_or("the currency")
                ),
                format!("write {key} in whole minor units of the currency"),
            );
            return None;
        }
        Some(a)
    };
    // A price: its amount and its standalone selling price (the amount unless given).
    let price = |l: &mut Loader, what: &str, amount: &DecimalText, ssp: &Option<DecimalText>| {
        let a = money(l, &format!("{what} amount"), amount)?;
        let Some(text) = ssp else { return Some((a, a)) };
        match money(l, &format!("{what} ssp"), text)? {
            ssp if ssp == Amount::ZERO && a != Amount::ZERO => {
                l.err(
                    file,
                    entry,
                    format!("{what} bills {a} but its ssp is 0"),
                    "write ssp as what the fee sells for on its own, or drop it (the amount is then its standalone selling price)",
                );
                None
            }
            ssp => Some((a, ssp)),
        }
    };
    let mut terms = ContractTerms::default();
    for f in &c.fee {
        let what = format!("fee \"{}\"", f.name);
        let Some((a, ssp)) = price(l, &what, &f.amount, &f.ssp) else {
            continue;
        };
        let ssp_of_fee = ssp;
        if f.ramp && ssp == Amount::ZERO {
            l.err(
                file,
                entry,
                format!("{what} is a ramp that starts free, with no ssp"),
                "write ssp as what the fee sells for on its own (per period, or per term with term_months): a ramp spreads what it bills over the term by it",
            );
            continue;
        }
        if f.ramp && span.is_some_and(|s| s.1.is_none()) {
            l.err(
                file,
                entry,
                format!("{what} is a ramp but the contract has no ends"),
                "a ramp's steps are spread over the term the customer committed to: give the contract its ends, or drop ramp",
            );
            continue;
        }
        let mut changes: Vec<FeeChange> = Vec::new();
        for ch in &f.change {
            let (Some(from), Some((amount, mut ssp))) = (
                l.time(file, entry, &format!("{what} change from"), &ch.from),
                price(
                    l,
                    &format!("{what} change from {}", ch.from),
                    &ch.amount,
                    &ch.ssp,
                ),
            ) else {
                continue;
            };
            if f.ramp && ch.ssp.is_none() {
                // A step of a ramp changes the price, not the service: it sells for what the
                // fee sold for before it.
                ssp = changes.last().map_or(ssp_of_fee, |c: &FeeChange| c.ssp);
            }
            if changes.last().is_some_and(|last| last.from >= from) {
                l.err(
                    file,
                    entry,
                    format!("{what}: change from {from} is not after the change before it"),
                    "list a fee's changes in the order they apply, each from a later time",
                );
                continue;
            }
            changes.push(FeeChange { from, amount, ssp });
        }
        let fee_starts = match (&f.starts, span) {
            (Some(_), _) => None, // Checked with the term below.
            (None, span) => span.map(|s| s.0),
        };
        let ends = span.and_then(|s| s.1);
        if let Some(ch) = changes.iter().find(|ch| {
            fee_starts.is_some_and(|s| ch.from <= s) || ends.is_some_and(|e| ch.from >= e)
        }) {
            l.err(
                file,
                entry,
                format!("{what}: change from {} is not while the fee runs", ch.from),
                "a change applies after the fee starts and before the contract ends: write the first price as the fee's amount",
            );
            continue;
        }
        if terms.fees.iter().any(|fee| fee.name == f.name)
            || terms.term_fees.iter().any(|t| t.name == f.name)
        {
            l.err(
                file,
                entry,
                format!("two fees are named \"{}\"", f.name),
                "give each fee of a contract its own name (the revenue schedule reports each as an obligation)",
            );
            continue;
        }
        match (f.term_months, span) {
            (None, _) if f.starts.is_some() => l.err(
                file,
                entry,
                format!("{what} has starts but no term_months"),
                "a fee billed every invoice period runs with the contract: remove starts, or give the fee term_months",
            ),
            (None, _) => terms.fees.push(Fee {
                name: f.name.clone(),
                amount: a,
                ssp,
                changes,
                ramp: f.ramp,
            }),
            (Some(months @ 1..=120), Some((contract_starts, until))) => {
                let anchor = match &f.starts {
                    None => Some(contract_starts),
                    Some(text) => l.time(file, entry, &format!("{what} starts"), text),
                };
                let Some(anchor) = anchor else { continue };
                if let Some(ch) = changes.iter().find(|ch| ch.from <= anchor) {
                    l.err(
                        file,
                        entry,
                        format!("{what}: change from {} is not after its first term starts ({anchor})", ch.from),
                        "a change applies after the fee starts: write the first price as the fee's amount",
                    );
                    continue;
                }
                if anchor < contract_starts || until.is_some_and(|u| anchor >= u) {
                    l.err(
                        file,
                        entry,
                        format!("{what} starts {anchor}, outside the contract ({contract_starts} to {})", until.map_or("open-ended".to_string(), |u| u.to_string())),
                        "start the fee's first term while the contract runs",
                    );
                    continue;
                }
                terms.term_fees.push(TermFee {
                    name: f.name.clone(),
                    amount: a,
                    ssp,
                    months,
                    anchor,
                    until,
                    changes,
                    ramp: f.ramp,
                });
            }
            (Some(1..=120), None) => {} // The contract's `starts` is reported already.
            (Some(months), _) => l.err(
                file,
                entry,
                format!("{what}: term_months = {months} is not from 1 to 120"),
                "write term_months as the months one payment covers (12 for an annual fee), or omit it to bill the fee every invoice period",
            ),
        }
    }
    terms.minimum_spend = c
        .minimum_spend
        .as_ref()
        .and_then(|t| money(l, "minimum_spend", t));
    terms.maximum_spend = c
        .maximum_spend
        .as_ref()
        .and_then(|t| money(l, "maximum_spend", t));
    terms.budget = c.budget.as_ref().and_then(|t| money(l, "budget", t));
    if let (Some(lo), Some(hi)) = (terms.minimum_spend, terms.maximum_spend) {
        if hi < lo {
            l.err(
                file,
                entry,
                format!("maximum_spend {hi} is below minimum_spend {lo}"),
                "raise maximum_spend to at least minimum_spend, or drop one of them",
            );
        }
    }
    for g in &c.credit {
        let what = format!("credit \"{}\"", g.name);
        let amount = money(l, &format!("{what} amount"), &g.amount);
        let granted = l.time(file, entry, &format!("{what} granted"), &g.granted);
        let expires = match &g.expires {
            Some(t) => l.time(file, entry, &format!("{what} expires"), t).map(Some),
            None => Some(None),
        };
        let material_right = match (g.material_right, &g.redemption) {
            (false, None) => Some(None),
            (false, Some(_)) => {
                l.err(
                    file,
                    entry,
                    format!("{what} has a redemption but is not a material right"),
                    "redemption is the share of a material right expected to be redeemed: set material_right = true, or drop redemption",
                );
                None
            }
            (true, _) if span.is_some_and(|s| s.1.is_none()) => {
                l.err(
                    file,
                    entry,
                    format!("{what} is a material right but the contract has no ends"),
                    "a material right takes its share of the fees of the term the customer committed to: give the contract its ends, or make the grant promotional = true (a price concession)",
                );
                None
            }
            (true, _) if terms.fees.is_empty() && terms.term_fees.is_empty() => {
                l.err(
                    file,
                    entry,
                    format!("{what} is a material right but the contract has no fees"),
                    "a material right takes its share of what the customer pays for the contract: with usage only, make the grant promotional = true (a price concession)",
                );
                None
            }
            (true, None) => Some(Some(UnitPrice::ONE)),
            (true, Some(text)) => {
                let key = format!("{what} redemption");
                match l.decimal(file, entry, &key, text, UnitPrice::parse) {
                    Some(v) if v > UnitPrice::ZERO && v <= UnitPrice::ONE => Some(Some(v)),
                    Some(_) => {
                        l.err(
                            file,
                            entry,
                            format!("{key} `{}` is not above 0 and at most 1", text.0),
                            "write the share of the grant expected to be redeemed as a fraction, e.g. \"0.8\" for 80%",
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        if let (Some(amount), Some(granted), Some(expires), Some(material_right)) =
            (amount, granted, expires, material_right)
        {
            if expires.is_some_and(|e| e <= granted) {
                l.err(
                    file,
                    entry,
                    format!("{what}: expires is not after granted"),
                    "set expires (exclusive) after granted, or omit it",
                );
                continue;
            }
            terms.credits.push(CreditGrant {
                name: g.name.clone(),
                amount,
                priority: g.priority,
                granted,
                expires,
                promotional: g.promotional || material_right.is_some(),
                material_right,
            });
        }
    }
    // Burn order: priority, then earliest expiry (never-expiring last), then as written.
    terms
        .credits
        .sort_by_key(|g| (g.priority, g.expires.is_none(), g.expires));
    for (i, d) in c.discount.iter().enumerate() {
        let what = if d.name.is_empty() {
            format!("discount {}", i + 1)
        } else {
            format!("discount \"{}\"", d.name)
        };
        let sku = match &d.sku {
            None => Some(None),
            Some(s) => match l.catalog.sku(s) {
                Some(x) => Some(Some(x)),
                None => {
                    l.err(
                        file,
                        entry,
                        format!("{what}: unknown sku `{s}`"),
                        "name a defined [[sku]], or omit sku to discount the whole invoice",
                    );
                    None
                }
            },
        };
        let off = match (&d.percent, &d.amount) {
            (Some(p), None) => l
                .decimal(file, entry, &format!("{what} percent"), p, UnitPrice::parse)
                .and_then(|p| {
                    let hundred = UnitPrice::parse("100").expect("100");
                    if p.is_negative() || p > hundred {
                        l.err(
                            file,
                            entry,
                            format!("{what}: percent {p} is not between 0 and 100"),
                            "write percent = \"10\" for 10% off",
                        );
                        return None;
                    }
                    Some(DiscountOff::Percent(UnitPrice(p.0 / 100)))
                }),
            (None, Some(a)) => money(l, &format!("{what} amount"), a).map(DiscountOff::Fixed),
            _ => {
                l.err(file, entry, format!("{what} needs exactly one of percent and amount"), "write percent = \"10\" (10% off) or amount = \"50\" (50 off per invoice period)");
                None
            }
        };
        let from = d
            .from
            .as_ref()
            .map(|t| l.time(file, entry, &format!("{what} from"), t));
        let until = d
            .until
            .as_ref()
            .map(|t| l.time(file, entry, &format!("{what} until"), t));
        if matches!(from, Some(None)) || matches!(until, Some(None)) {
            continue;
        }
        let (from, until) = (from.flatten(), until.flatten());
        if let (Some(f), Some(u)) = (from, until) {
            if u <= f {
                l.err(
                    file,
                    entry,
                    format!("{what}: until {u} is not after from {f}"),
                    "set until (exclusive) after from",
                );
                continue;
            }
        }
        if let (Some(sku), Some(off)) = (sku, off) {
            terms.discounts.push(Discount {
                name: if d.name.is_empty() {
                    what
                } else {
                    d.name.clone()
                },
                sku,
                off,
                from,
                until,
            });
        }
    }
    terms
}

fn entitlements(
    l: &mut Loader,
    file: &Path,
    entry: &str,
    defs: &[EntitlementDef],
) -> Vec<Entitlement> {
    let mut out: Vec<Entitlement> = Vec::new();
    for d in defs {
        let what = format!("entitlement for `{}`", d.sku);
        let Some(sku) = l.catalog.sku(&d.sku) else {
            l.err(
                file,
                entry,
                format!("{what}: unknown sku"),
                "name a defined [[sku]]",
            );
            continue;
        };
        if out.iter().any(|e| e.sku == sku) {
            l.err(
                file,
                entry,
                format!("{what}: given twice"),
                "give each SKU one entitlement per contract",
            );
            continue;
        }
        let qty = |l: &mut Loader, key: &str, t: &DecimalText| -> Option<Quantity> {
            let v = l.decimal(file, entry, &format!("{what} {key}"), t, Quantity::parse)?;
            if v.is_negative() {
                l.err(
                    file,
                    entry,
                    format!("{what}: {key} is negative"),
                    format!("write {key} as a quantity of at least 0"),
                );
                return None;
            }
            Some(v)
        };
        let Some(included) = qty(l, "included", &d.included) else {
            continue;
        };
        let soft = d.soft_limit.as_ref().map(|t| qty(l, "soft_limit", t));
        let hard = d.hard_limit.as_ref().map(|t| qty(l, "hard_limit", t));
        let cap = d.rollover_cap.as_ref().map(|t| qty(l, "rollover_cap", t));
        if [soft, hard, cap].iter().any(|x| matches!(x, Some(None))) {
            continue;
        }
        let (soft_limit, hard_limit, rollover_cap) =
            (soft.flatten(), hard.flatten(), cap.flatten());
        if let (Some(s), Some(h)) = (soft_limit, hard_limit) {
            if h < s {
                l.err(file, entry, format!("{what}: hard_limit {h} is below soft_limit {s}"), "the hard limit blocks, the soft one warns: put the soft limit at or below the hard one");
                continue;
            }
        }
        if rollover_cap.is_some() && !d.rollover {
            l.err(
                file,
                entry,
                format!("{what}: rollover_cap without rollover = true"),
                "set rollover = true, or remove rollover_cap",
            );
            continue;
        }
        let mut thresholds = d.thresholds.clone().unwrap_or_else(|| vec![50, 90, 100]);
        thresholds.sort_unstable();
        thresholds.dedup();
        if thresholds.first() == Some(&0) {
            l.err(
                file,
                entry,
                format!("{what}: a threshold of 0%"),
                "thresholds are percentages of the allowance above 0, e.g. [50, 90, 100]",
            );
            continue;
        }
        out.push(Entitlement {
            sku,
            included,
            thresholds,
            soft_limit,
            hard_limit,
            rollover: d.rollover,
            rollover_cap,
        });
    }
    out
}

pub(super) fn build_contracts(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    let mut default_shadow: Option<(&Path, &str)> = None;
    for (file, f) in files {
        if let Some(card) = &f.shadow_rate_card {
            if let Some((prev, _)) = default_shadow {
                l.err(
                    file,
                    "shadow_rate_card",
                    format!("set twice (also in {})", prev.display()),
                    "set the catalog-wide shadow_rate_card in one file",
                );
            }
            default_shadow = Some((file, card));
        }
    }
    for (file, f) in files {
        for c in &f.contract {
            let entry = format!("contract \"{}\"", c.id);
            if let Some(prev) = seen.insert(&c.id, file) {
                l.err(
                    file,
                    &entry,
                    format!("defined twice (also in {})", prev.display()),
                    "give each contract one definition; amend it with a new contract id and dates",
                );
                continue;
            }
            let customer = l.catalog.customer(&c.customer);
            if customer.is_none() {
                l.err(
                    file,
                    &entry,
                    format!("unknown customer `{}`", c.customer),
                    "define the customer in a [[customer]] entry, or fix the spelling",
                );
            }
            let card = l
                .catalog
                .rate_cards
                .iter()
                .position(|r| r.id == c.rate_card);
            if card.is_none() {
                l.err(
                    file,
                    &entry,
                    format!("unknown rate_card `{}`", c.rate_card),
                    "define the rate card in a [[rate_card]] entry, or fix the spelling",
                );
            }
            if let (Some(v), Some(card)) = (c.version, card) {
                if !l.catalog.rate_cards[card]
                    .versions
                    .iter()
                    .any(|x| x.version == v)
                {
                    l.err(
                        file,
                        &entry,
                        format!(
                            "pins version {v} of rate card `{}`, which does not exist",
                            c.rate_card
                        ),
                        "pin an existing version, or remove `version` to follow the latest",
                    );
                }
            }
            let starts = l.time(file, &entry, "starts", &c.starts);
            let ends = match &c.ends {
                Some(e) => l.time(file, &entry, "ends", e).map(Some),
                None => Some(None),
            };
            if let (Some(s), Some(Some(e))) = (starts, ends) {
                if e <= s {
                    l.err(
                        file,
                        &entry,
                        format!("ends {e} is not after starts {s}"),
                        "set ends (exclusive) after starts, or omit it",
                    );
                }
            }
            let currency = card.map(|i| l.catalog.rate_cards[i].currency.clone());
            let span = starts.zip(ends);
            let terms = contract_terms(l, file, &entry, c, currency.as_deref(), span);
            let entitlements = entitlements(l, file, &entry, &c.entitlement);
            let shadow = match c
                .shadow_rate_card
                .as_deref()
                .or(default_shadow.map(|d| d.1))
            {
                None => None,
                Some(name) => {
                    match l.catalog.rate_cards.iter().position(|r| r.id == name) {
                        None => {
                            l.err(file, &entry, format!("unknown shadow_rate_card `{name}`"), "define the rate card in a [[rate_card]] entry, or fix the spelling");
                            None
                        }
                        Some(i)
                            if currency
                                .as_deref()
                                .is_some_and(|cur| cur != l.catalog.rate_cards[i].currency) =>
                        {
                            l.err(file, &entry, format!("shadow_rate_card `{name}` bills in {}, the contract in {}", l.catalog.rate_cards[i].currency, currency.as_deref().unwrap_or("?")), "shadow billing compares like with like: give the shadow card the contract's currency");
                            None
                        }
                        Some(i) => {
                            // Every SKU the live card prices must have a shadow price, or shadow
                            // totals would silently leave usage out.
                            let shadow_skus: Vec<SkuIdx> = l.catalog.rate_cards[i]
                                .versions
                                .last()
                                .map(|v| v.prices.keys().copied().collect())
                                .unwrap_or_default();
                            let missing: Vec<String> = card
                                .map(|live| {
                                    let mut skus: Vec<SkuIdx> = l.catalog.rate_cards[live]
                                        .versions
                                        .iter()
                                        .flat_map(|v| v.prices.keys().copied())
                                        .filter(|s| !shadow_skus.contains(s))
                                        .collect();
                                    skus.sort();
                                    skus.dedup();
                                    skus.iter()
                                        .map(|s| l.catalog.skus[s.ix()].id.clone())
                                        .collect()
                                })
                                .unwrap_or_default();
                            if missing.is_empty() {
                                Some(RateCardIdx(i as u32))
                            } else {
                                l.err(file, &entry, format!("shadow_rate_card `{name}` (latest version) does not price {}", missing.join(", ")), "price every SKU of the contract's rate card in the shadow card");
                                None
                            }
                        }
                    }
                }
            };
            let renewal = c
                .renewal
                .as_ref()
                .and_then(|r| renewal(l, file, &entry, r, c.ends.is_some()));
            if let (Some(customer), Some(card), Some(starts), Some(ends)) =
                (customer, card, starts, ends)
            {
                l.catalog.contracts.push(Contract {
                    id: c.id.clone(),
                    customer,
                    rate_card: RateCardIdx(card as u32),
                    pinned_version: c.version,
                    starts,
                    ends,
                    terms,
                    entitlements,
                    shadow,
                    marketplace: None,
                    renewal,
                });
            }
        }
    }
}

/// A contract's `[contract.renewal]`: a term of 1 to 120 months, a likelihood from 0 to 1, on
/// a contract that ends.
fn renewal(
    l: &mut Loader,
    file: &Path,
    entry: &str,
    r: &RenewalDef,
    ends: bool,
) -> Option<Renewal> {
    if !ends {
        l.err(
            file,
            entry,
            "[contract.renewal] on a contract without `ends`: it runs until further notice, so there is nothing to renew",
            "set `ends` (exclusive) to the end of the current term, or remove [contract.renewal]",
        );
        return None;
    }
    if !(1..=120).contains(&r.term_months) {
        l.err(
            file,
            entry,
            format!(
                "renewal.term_months = {} is not from 1 to 120",
                r.term_months
            ),
            "give the length of each renewal term in months, e.g. term_months = 12",
        );
        return None;
    }
    let likelihood = match &r.likelihood {
        None => UnitPrice::ONE,
        Some(text) => {
            let v = l.decimal(file, entry, "renewal.likelihood", text, UnitPrice::parse)?;
            if v.is_negative() || v > UnitPrice::ONE {
                l.err(
                    file,
                    entry,
                    format!("renewal.likelihood `{}` is not from 0 to 1", text.0),
                    "write the chance that each term renews as a fraction, e.g. \"0.9\" for 90%",
                );
                return None;
            }
            v
        }
    };
    Some(Renewal {
        term_months: r.term_months,
        likelihood,
    })
}
