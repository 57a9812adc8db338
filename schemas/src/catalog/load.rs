//! Loading and checking a catalog directory.
//!
//! Every `*.toml` file below the directory (sorted by path) may hold any of the arrays
//! `[[sku]]`, `[[customer]]`, `[[contract]]` and `[[rate_card]]`. All problems are collected, each
//! naming the file, the entry and the fix, so one `meterflow catalog check` run shows them all.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::*;
use crate::entitlement::Entitlement;
use crate::money::{
    minor_unit_digits, Amount, DecimalError, Quantity, Rounding, UnitPrice, AMOUNT_SCALE,
};
use crate::pricing::{Package, Percentage, Tier};

/// One problem in a catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogError {
    pub file: PathBuf,
    /// e.g. `rate_card "standard" version 2, price for sku "tokens"`.
    pub entry: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}\n    fix: {}",
            self.file.display(),
            self.entry,
            self.message,
            self.fix
        )
    }
}

/// All problems found in a catalog.
#[derive(Clone, Debug, thiserror::Error)]
pub struct CatalogErrors(pub Vec<CatalogError>);

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the catalog has {} problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    sku: Vec<SkuDef>,
    #[serde(default)]
    customer: Vec<CustomerDef>,
    #[serde(default)]
    contract: Vec<ContractDef>,
    #[serde(default)]
    rate_card: Vec<RateCardDef>,
    #[serde(default)]
    tax: Vec<TaxDef>,
    /// Shadow rate card for every contract that names none of its own.
    shadow_rate_card: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxDef {
    id: String,
    #[serde(default)]
    name: String,
    rate: DecimalText,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeDef {
    name: String,
    amount: DecimalText,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscountDef {
    #[serde(default)]
    name: String,
    sku: Option<String>,
    percent: Option<DecimalText>,
    amount: Option<DecimalText>,
    from: Option<String>,
    until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkuDef {
    id: String,
    unit: String,
    #[serde(default)]
    description: String,
    /// `sum` (default), `count`, `max`, `unique_count` or `latest`.
    aggregation: Option<String>,
    /// For `unique_count`: the `metadata.attributes` key whose distinct values are counted.
    unique_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerDef {
    id: String,
    #[serde(default)]
    name: String,
    /// The `[[tax]]` of the customer's jurisdiction.
    tax: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractDef {
    id: String,
    customer: String,
    rate_card: String,
    /// Pin to this rate-card version (grandfathering).
    version: Option<u32>,
    starts: String,
    ends: Option<String>,
    #[serde(default)]
    fee: Vec<FeeDef>,
    #[serde(default)]
    discount: Vec<DiscountDef>,
    minimum_spend: Option<DecimalText>,
    maximum_spend: Option<DecimalText>,
    /// Planned usage spend per invoice period (burn-rate signals; bills nothing).
    budget: Option<DecimalText>,
    #[serde(default)]
    credit: Vec<CreditDef>,
    #[serde(default)]
    entitlement: Vec<EntitlementDef>,
    /// Price this contract's usage under this rate card too, side by side (shadow billing).
    shadow_rate_card: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntitlementDef {
    sku: String,
    included: DecimalText,
    thresholds: Option<Vec<u32>>,
    soft_limit: Option<DecimalText>,
    hard_limit: Option<DecimalText>,
    #[serde(default)]
    rollover: bool,
    rollover_cap: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditDef {
    name: String,
    amount: DecimalText,
    #[serde(default)]
    priority: u32,
    granted: String,
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateCardDef {
    id: String,
    version: u32,
    effective_from: String,
    currency: String,
    #[serde(default)]
    price: Vec<PriceDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceDef {
    sku: String,
    region: Option<String>,
    model: String,
    unit_price: Option<DecimalText>,
    #[serde(default)]
    tiers: Vec<TierDef>,
    /// Package model: units per package, price per package, free units, `up` or `down`.
    package_size: Option<DecimalText>,
    package_price: Option<DecimalText>,
    free_units: Option<DecimalText>,
    rounding: Option<String>,
    /// Percentage model: percent of the transaction amount, fee per transaction, free
    /// transactions (`free_units` is shared with the package model).
    percent: Option<DecimalText>,
    fixed_fee: Option<DecimalText>,
    free_events: Option<u32>,
    /// Percentage model: the least and the most one transaction pays.
    min_fee: Option<DecimalText>,
    max_fee: Option<DecimalText>,
    /// What a unit costs the seller (cost of goods), for margin anomalies.
    unit_cost: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierDef {
    up_to: Option<DecimalText>,
    unit_price: DecimalText,
    flat_fee: Option<DecimalText>,
}

/// A decimal written as a TOML string or integer. Floats are refused: they are binary
/// approximations and would put rounding into prices.
struct DecimalText(String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DecimalText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal as a string, e.g. \"0.0001\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DecimalText, E> {
                Err(E::custom(format!(
                    "{v} is a TOML float, which is inexact; write it as a string: \"{v}\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

struct Loader {
    errors: Vec<CatalogError>,
    catalog: Catalog,
}

impl Loader {
    fn err(
        &mut self,
        file: &Path,
        entry: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(CatalogError {
            file: file.to_owned(),
            entry: entry.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    fn time(&mut self, file: &Path, entry: &str, key: &str, text: &str) -> Option<EventTime> {
        match EventTime::parse_rfc3339(text) {
            Ok(t) => Some(t),
            Err(why) => {
                self.err(
                    file,
                    entry,
                    format!("{key} `{text}` is not an RFC 3339 time: {why}"),
                    format!("write {key} like \"2026-01-01T00:00:00Z\""),
                );
                None
            }
        }
    }

    fn decimal<T>(
        &mut self,
        file: &Path,
        entry: &str,
        key: &str,
        text: &DecimalText,
        parse: fn(&str) -> Result<T, DecimalError>,
    ) -> Option<T> {
        match parse(&text.0) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(file, entry, format!("{key} `{}` is {e}", text.0), format!("write {key} as a decimal string with at most 9 fractional digits, e.g. \"0.0001\""));
                None
            }
        }
    }
}

/// Reads and checks every `*.toml` file below `dir`.
pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogErrors> {
    let mut files = Vec::new();
    collect_toml(dir, &mut files).map_err(|e| {
        CatalogErrors(vec![CatalogError {
            file: dir.to_owned(),
            entry: "directory".into(),
            message: format!("cannot read the catalog directory: {e}"),
            fix: "pass --catalog with a directory of *.toml catalog files (see docs/catalog.md)"
                .into(),
        }])
    })?;
    files.sort();
    let mut parsed = Vec::new();
    let mut loader = Loader {
        errors: Vec::new(),
        catalog: Catalog::default(),
    };
    if files.is_empty() {
        loader.err(dir, "directory", "no *.toml files found", "add catalog files (skus, customers, contracts, rate cards); `meterflow demo` writes an example");
    }
    for file in files {
        match std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|s| toml::from_str::<CatalogFile>(&s).map_err(|e| e.to_string())) {
            Ok(f) => parsed.push((file, f)),
            Err(e) => loader.err(&file, "file", e.trim().to_string(), "fix the TOML at the line shown; allowed arrays are [[sku]], [[customer]], [[contract]], [[rate_card]]"),
        }
    }
    build(&mut loader, &parsed);
    if loader.errors.is_empty() {
        loader.catalog.index();
        Ok(loader.catalog)
    } else {
        Err(CatalogErrors(loader.errors))
    }
}

/// Parses one TOML text as a whole catalog (tests and embedded examples).
pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogErrors> {
    let file = PathBuf::from("<inline>");
    let mut loader = Loader {
        errors: Vec::new(),
        catalog: Catalog::default(),
    };
    match toml::from_str::<CatalogFile>(text) {
        Ok(f) => build(&mut loader, &[(file, f)]),
        Err(e) => loader.err(
            &file,
            "file",
            e.to_string(),
            "fix the TOML at the line shown",
        ),
    }
    if loader.errors.is_empty() {
        loader.catalog.index();
        Ok(loader.catalog)
    } else {
        Err(CatalogErrors(loader.errors))
    }
}

/// Every `*.toml` file below `dir` (unsorted).
pub fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_toml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

fn build(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
    let mut sku_seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for (file, f) in files {
        for s in &f.sku {
            let entry = format!("sku \"{}\"", s.id);
            if let Some(prev) = sku_seen.insert(&s.id, file) {
                l.err(
                    file,
                    &entry,
                    format!("defined twice (also in {})", prev.display()),
                    "give each SKU one definition",
                );
                continue;
            }
            if s.unit.trim().is_empty() {
                l.err(
                    file,
                    &entry,
                    "unit is empty",
                    "name the unit events report, e.g. unit = \"tokens\"",
                );
            }
            let aggregation = match s.aggregation.as_deref() {
                None | Some("sum") => Aggregation::Sum,
                Some("count") => Aggregation::Count,
                Some("max") => Aggregation::Max,
                Some("unique_count") => Aggregation::UniqueCount,
                Some("latest") => Aggregation::Latest,
                Some(other) => {
                    l.err(
                        file,
                        &entry,
                        format!("aggregation `{other}` is not supported"),
                        "use aggregation = \"sum\" (default), \"count\", \"max\", \"unique_count\" or \"latest\"",
                    );
                    Aggregation::Sum
                }
            };
            match (aggregation, s.unique_by.as_deref().map(str::trim)) {
                (Aggregation::UniqueCount, None | Some("")) => l.err(
                    file,
                    &entry,
                    "aggregation = \"unique_count\" needs unique_by",
                    "name the metadata.attributes key to count distinct values of, e.g. unique_by = \"user_id\"",
                ),
                (Aggregation::UniqueCount, _) | (_, None) => {}
                (other, Some(_)) => l.err(
                    file,
                    &entry,
                    format!("unique_by is set but aggregation is `{}`", other.name()),
                    "remove unique_by, or set aggregation = \"unique_count\"",
                ),
            }
            l.catalog.skus.push(Sku {
                id: s.id.clone(),
                unit: s.unit.clone(),
                description: s.description.clone(),
                aggregation,
                unique_by: s.unique_by.as_ref().map(|k| k.trim().to_string()),
            });
        }
    }
    build_taxes(l, files);
    let mut customer_seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for (file, f) in files {
        for c in &f.customer {
            let tax = c.tax.as_ref().and_then(|t| {
                let found = l.catalog.taxes.iter().position(|x| &x.id == t);
                if found.is_none() {
                    l.err(
                        file,
                        format!("customer \"{}\"", c.id),
                        format!("unknown tax `{t}`"),
                        "define it in a [[tax]] entry (id, name, rate), or fix the spelling",
                    );
                }
                found.map(|i| TaxIdx(i as u32))
            });
            if let Some(prev) = customer_seen.insert(&c.id, file) {
                l.err(
                    file,
                    format!("customer \"{}\"", c.id),
                    format!("defined twice (also in {})", prev.display()),
                    "give each customer one definition",
                );
                continue;
            }
            l.catalog.customers.push(Customer {
                id: c.id.clone(),
                name: if c.name.is_empty() {
                    c.id.clone()
                } else {
                    c.name.clone()
                },
                tax,
            });
        }
    }
    l.catalog.index();
    build_rate_cards(l, files);
    l.catalog.index();
    build_contracts(l, files);
}

fn build_taxes(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
    for (file, f) in files {
        for t in &f.tax {
            let entry = format!("tax \"{}\"", t.id);
            if l.catalog.taxes.iter().any(|x| x.id == t.id) {
                l.err(
                    file,
                    &entry,
                    "defined twice",
                    "give each tax one definition",
                );
                continue;
            }
            let Some(rate) = l.decimal(file, &entry, "rate", &t.rate, UnitPrice::parse) else {
                continue;
            };
            if rate.is_negative() || rate > UnitPrice::parse("1").expect("one") {
                l.err(
                    file,
                    &entry,
                    format!("rate {rate} is not between 0 and 1"),
                    "write the rate as a fraction: 19% is rate = \"0.19\"",
                );
                continue;
            }
            l.catalog.taxes.push(Tax {
                id: t.id.clone(),
                name: if t.name.is_empty() {
                    t.id.clone()
                } else {
                    t.name.clone()
                },
                rate,
            });
        }
    }
}

/// A contract's fees, discounts and spend bounds, checked against its currency's minor unit.
fn contract_terms(
    l: &mut Loader,
    file: &Path,
    entry: &str,
    c: &ContractDef,
    currency: Option<&str>,
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
    let mut terms = ContractTerms::default();
    for f in &c.fee {
        if let Some(a) = money(l, &format!("fee \"{}\" amount", f.name), &f.amount) {
            terms.fees.push((f.name.clone(), a));
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
        if let (Some(amount), Some(granted), Some(expires)) = (amount, granted, expires) {
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

fn build_rate_cards(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
    // Group every version by card id, remembering where each was defined.
    let mut cards: BTreeMap<&str, Vec<(&Path, &RateCardDef)>> = BTreeMap::new();
    for (file, f) in files {
        for rc in &f.rate_card {
            cards.entry(&rc.id).or_default().push((file, rc));
        }
    }
    let mut regions: BTreeMap<String, RegionIdx> = BTreeMap::new();
    for (_, f) in files {
        for p in f.rate_card.iter().flat_map(|rc| &rc.price) {
            if let Some(r) = &p.region {
                let n = regions.len() as u32;
                regions.entry(r.clone()).or_insert(RegionIdx(n));
            }
        }
    }
    l.catalog.regions = vec![String::new(); regions.len()];
    for (name, ix) in &regions {
        l.catalog.regions[ix.ix()] = name.clone();
    }
    l.catalog.index();

    for (card_id, mut defs) in cards {
        let card_ix = RateCardIdx(l.catalog.rate_cards.len() as u32);
        defs.sort_by_key(|(_, d)| d.version);
        let currency = defs[0].1.currency.clone();
        let mut versions: Vec<RateCardVersion> = Vec::new();
        for (file, def) in defs {
            let entry = format!("rate_card \"{card_id}\" version {}", def.version);
            if versions.iter().any(|v| v.version == def.version) {
                l.err(file, &entry, "version defined twice", "versions are immutable once published: add a new version number instead of editing or repeating one");
                continue;
            }
            if def.currency.len() != 3 || !def.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                l.err(
                    file,
                    &entry,
                    format!("currency `{}` is not an ISO 4217 code", def.currency),
                    "write a three-letter code such as \"USD\"",
                );
            }
            if def.currency != currency {
                l.err(file, &entry, format!("currency {} differs from version {}'s {currency}", def.currency, versions.first().map_or(0, |v| v.version)), "an invoice never mixes currencies: keep one currency per rate card, or create a new rate card");
            }
            let Some(effective_from) = l.time(file, &entry, "effective_from", &def.effective_from)
            else {
                continue;
            };
            if let Some(prev) = versions.last() {
                if effective_from <= prev.effective_from {
                    l.err(
                        file,
                        &entry,
                        format!(
                            "effective_from {effective_from} is not after version {}'s {}",
                            prev.version, prev.effective_from
                        ),
                        "give each new version a later effective_from than the one before",
                    );
                }
            }
            let mut prices: FxHashMap<SkuIdx, Vec<PriceIdx>> = FxHashMap::default();
            for pd in &def.price {
                let pentry = format!("{entry}, price for sku \"{}\"", pd.sku);
                let Some(sku) = l.catalog.sku(&pd.sku) else {
                    l.err(
                        file,
                        &pentry,
                        "unknown sku",
                        "define it in a [[sku]] entry first, or fix the spelling",
                    );
                    continue;
                };
                let region = pd.region.as_deref().and_then(|r| l.catalog.region(r));
                let Some(model) = price_model(l, file, &pentry, pd) else {
                    continue;
                };
                let unit_cost = match &pd.unit_cost {
                    None => None,
                    Some(text) => {
                        let Some(c) = l.decimal(file, &pentry, "unit_cost", text, UnitPrice::parse)
                        else {
                            continue;
                        };
                        if c.is_negative() {
                            l.err(
                                file,
                                &pentry,
                                "unit_cost is negative",
                                "write what one unit costs to serve, 0 or more",
                            );
                            continue;
                        }
                        Some(c)
                    }
                };
                let list = prices.entry(sku).or_default();
                if list
                    .iter()
                    .any(|p| l.catalog.prices[p.ix()].region == region)
                {
                    l.err(
                        file,
                        &pentry,
                        format!(
                            "region {} priced twice",
                            pd.region.as_deref().unwrap_or("(default)")
                        ),
                        "keep one price per sku and region in a version",
                    );
                    continue;
                }
                let ix = PriceIdx(l.catalog.prices.len() as u32);
                l.catalog.prices.push(Price {
                    rate_card: card_ix,
                    version: def.version,
                    effective_from,
                    sku,
                    region,
                    currency: Arc::from(def.currency.as_str()),
                    model,
                    unit_cost,
                });
                list.push(ix);
                // Region-specific prices are tried before the default.
                let prices_ref = &l.catalog.prices;
                list.sort_by_key(|p| prices_ref[p.ix()].region.is_none());
            }
            versions.push(RateCardVersion {
                version: def.version,
                effective_from,
                prices,
            });
        }
        l.catalog.rate_cards.push(RateCard {
            id: card_id.to_string(),
            currency,
            versions,
        });
    }
}

fn price_model(l: &mut Loader, file: &Path, entry: &str, pd: &PriceDef) -> Option<PriceModel> {
    let package_keys = pd.package_size.is_some()
        || pd.package_price.is_some()
        || (pd.free_units.is_some() && pd.model != "percentage")
        || pd.rounding.is_some();
    let percentage_keys = pd.percent.is_some()
        || pd.fixed_fee.is_some()
        || pd.free_events.is_some()
        || pd.min_fee.is_some()
        || pd.max_fee.is_some();
    if percentage_keys && pd.model != "percentage" {
        l.err(
            file,
            entry,
            format!(
                "percent, fixed_fee, free_events, min_fee and max_fee belong to model = \"percentage\", not {}",
                pd.model
            ),
            "remove them, or set model = \"percentage\"",
        );
        return None;
    }
    if package_keys && pd.model != "package" {
        l.err(
            file,
            entry,
            format!("package_size, package_price, free_units and rounding belong to model = \"package\", not {}", pd.model),
            "remove them, or set model = \"package\"",
        );
        return None;
    }
    match pd.model.as_str() {
        "per_unit" => {
            if !pd.tiers.is_empty() {
                l.err(
                    file,
                    entry,
                    "per_unit takes unit_price, not tiers",
                    "remove tiers, or use model = \"graduated\" or \"volume\"",
                );
                return None;
            }
            let Some(text) = &pd.unit_price else {
                l.err(
                    file,
                    entry,
                    "per_unit needs unit_price",
                    "add unit_price = \"0.0001\"",
                );
                return None;
            };
            let unit_price = l.decimal(file, entry, "unit_price", text, UnitPrice::parse)?;
            if unit_price.is_negative() {
                l.err(
                    file,
                    entry,
                    "unit_price is negative",
                    "prices are non-negative; give discounts as their own catalog entries",
                );
                return None;
            }
            Some(PriceModel::PerUnit { unit_price })
        }
        "graduated" | "volume" => {
            if pd.unit_price.is_some() {
                l.err(
                    file,
                    entry,
                    format!("{} takes tiers, not unit_price", pd.model),
                    "move the price into tiers = [{ unit_price = \"...\" }]",
                );
                return None;
            }
            let tiers = tiers(l, file, entry, &pd.tiers)?;
            Some(if pd.model == "graduated" {
                PriceModel::Graduated { tiers }
            } else {
                PriceModel::Volume { tiers }
            })
        }
        "package" => package(l, file, entry, pd),
        "percentage" => percentage(l, file, entry, pd),
        other => {
            l.err(
                file,
                entry,
                format!("unknown model `{other}`"),
                "use per_unit, graduated, volume, package or percentage",
            );
            None
        }
    }
}

fn percentage(l: &mut Loader, file: &Path, entry: &str, pd: &PriceDef) -> Option<PriceModel> {
    if pd.unit_price.is_some() || !pd.tiers.is_empty() {
        l.err(
            file,
            entry,
            "percentage takes percent and fixed_fee, not unit_price or tiers",
            "write percent = \"2.9\" and fixed_fee = \"0.30\"",
        );
        return None;
    }
    let Some(percent) = &pd.percent else {
        l.err(
            file,
            entry,
            "percentage needs percent",
            "write percent = \"2.9\" for 2.9% of each transaction amount",
        );
        return None;
    };
    let percent = l.decimal(file, entry, "percent", percent, UnitPrice::parse)?;
    let fixed_fee = match &pd.fixed_fee {
        Some(f) => l.decimal(file, entry, "fixed_fee", f, Amount::parse_price)?,
        None => Amount::ZERO,
    };
    let free_units = match &pd.free_units {
        Some(f) => l.decimal(file, entry, "free_units", f, Quantity::parse)?,
        None => Quantity::ZERO,
    };
    let hundred = UnitPrice::parse("100").expect("100");
    if percent.is_negative()
        || percent > hundred
        || fixed_fee.is_negative()
        || free_units.is_negative()
    {
        l.err(
            file,
            entry,
            "percent must be between 0 and 100, fixed_fee and free_units not negative",
            "fix the percentage numbers",
        );
        return None;
    }
    let mut fee_limit = |key: &str, text: &Option<DecimalText>| match text {
        Some(t) => l
            .decimal(file, entry, key, t, Amount::parse_price)
            .map(Some),
        None => Some(None),
    };
    let min_fee = fee_limit("min_fee", &pd.min_fee)?;
    let max_fee = fee_limit("max_fee", &pd.max_fee)?;
    if min_fee.is_some_and(|m| m.is_negative()) || max_fee.is_some_and(|m| m.is_negative()) {
        l.err(
            file,
            entry,
            "min_fee and max_fee must not be negative",
            "fix the per-transaction fee limits",
        );
        return None;
    }
    if let (Some(min), Some(max)) = (min_fee, max_fee) {
        if min > max {
            l.err(
                file,
                entry,
                format!("min_fee {min} is above max_fee {max}"),
                "make min_fee at most max_fee",
            );
            return None;
        }
    }
    let free = free_units != Quantity::ZERO || pd.free_events.unwrap_or(0) > 0;
    if free && (min_fee.is_some() || max_fee.is_some()) {
        l.err(
            file,
            entry,
            "min_fee / max_fee bound each transaction's fee, which free_units / free_events (per-period allowances) would make depend on the other transactions",
            "drop free_units and free_events, or the per-transaction limits (a credit grant can stand in for an allowance)",
        );
        return None;
    }
    Some(PriceModel::Percentage(Percentage {
        rate: UnitPrice(percent.0 / 100),
        fixed_fee,
        free_units,
        free_events: pd.free_events.unwrap_or(0) as i64,
        min_fee,
        max_fee,
    }))
}

fn package(l: &mut Loader, file: &Path, entry: &str, pd: &PriceDef) -> Option<PriceModel> {
    if pd.unit_price.is_some() || !pd.tiers.is_empty() {
        l.err(
            file,
            entry,
            "package takes package_size and package_price, not unit_price or tiers",
            "write package_size = \"1000\" and package_price = \"2.50\"",
        );
        return None;
    }
    let (Some(size), Some(price)) = (&pd.package_size, &pd.package_price) else {
        l.err(
            file,
            entry,
            "package needs package_size and package_price",
            "write package_size = \"1000\" and package_price = \"2.50\"",
        );
        return None;
    };
    let size = l.decimal(file, entry, "package_size", size, Quantity::parse)?;
    let price = l.decimal(file, entry, "package_price", price, UnitPrice::parse)?;
    let free_units = match &pd.free_units {
        Some(f) => l.decimal(file, entry, "free_units", f, Quantity::parse)?,
        None => Quantity::ZERO,
    };
    if size <= Quantity::ZERO || price.is_negative() || free_units.is_negative() {
        l.err(
            file,
            entry,
            "package_size must be positive, package_price and free_units not negative",
            "fix the package numbers",
        );
        return None;
    }
    let round_up = match pd.rounding.as_deref() {
        None | Some("up") => true,
        Some("down") => false,
        Some(other) => {
            l.err(
                file,
                entry,
                format!("rounding `{other}` is neither `up` nor `down`"),
                "rounding = \"up\" charges a started package (default); \"down\" only complete ones",
            );
            return None;
        }
    };
    Some(PriceModel::Package(Package {
        size,
        price,
        free_units,
        round_up,
    }))
}

fn tiers(l: &mut Loader, file: &Path, entry: &str, defs: &[TierDef]) -> Option<Vec<Tier>> {
    if defs.is_empty() {
        l.err(
            file,
            entry,
            "no tiers",
            "add at least one tier; the last one has no up_to",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, t) in defs.iter().enumerate() {
        let tentry = format!("{entry}, tier {}", i + 1);
        let last = i + 1 == defs.len();
        let up_to = match (&t.up_to, last) {
            (Some(_), true) => {
                l.err(
                    file,
                    &tentry,
                    "the last tier has an up_to bound",
                    "remove up_to from the last tier so every quantity has a tier",
                );
                ok = false;
                None
            }
            (None, false) => {
                l.err(
                    file,
                    &tentry,
                    "only the last tier may omit up_to",
                    "give this tier an up_to bound (inclusive)",
                );
                ok = false;
                None
            }
            (Some(text), false) => l.decimal(file, &tentry, "up_to", text, Quantity::parse),
            (None, true) => None,
        };
        if let (Some(up), Some(prev)) = (up_to, out.last().and_then(|p: &Tier| p.up_to)) {
            if up <= prev {
                l.err(
                    file,
                    &tentry,
                    format!("up_to {up} is not above the previous tier's {prev}"),
                    "make tier bounds strictly increasing",
                );
                ok = false;
            }
        }
        if up_to.is_some_and(|u| u <= Quantity::ZERO) {
            l.err(
                file,
                &tentry,
                "up_to must be positive",
                "tier bounds start above zero",
            );
            ok = false;
        }
        let unit_price = l.decimal(file, &tentry, "unit_price", &t.unit_price, UnitPrice::parse);
        let flat_fee = match &t.flat_fee {
            Some(text) => l.decimal(file, &tentry, "flat_fee", text, Amount::parse_price),
            None => Some(Amount::ZERO),
        };
        match (unit_price, flat_fee) {
            (Some(unit_price), Some(flat_fee))
                if !unit_price.is_negative() && !flat_fee.is_negative() =>
            {
                out.push(Tier {
                    up_to,
                    unit_price,
                    flat_fee,
                });
            }
            (Some(_), Some(_)) => {
                l.err(
                    file,
                    &tentry,
                    "negative unit_price or flat_fee",
                    "prices and fees are non-negative",
                );
                ok = false;
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn build_contracts(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
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
            let terms = contract_terms(l, file, &entry, c, currency.as_deref());
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
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[sku]]
id = "tokens"
unit = "tokens"

[[customer]]
id = "acme"

[[rate_card]]
id = "std"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"
[[rate_card.price]]
sku = "tokens"
model = "graduated"
tiers = [{ up_to = "1000", unit_price = "0.01", flat_fee = "5" }, { unit_price = "0.005" }]
[[rate_card.price]]
sku = "tokens"
region = "eu"
model = "per_unit"
unit_price = "0.02"

[[rate_card]]
id = "std"
version = 2
effective_from = "2026-06-01T00:00:00Z"
currency = "USD"
[[rate_card.price]]
sku = "tokens"
model = "per_unit"
unit_price = 1

[[contract]]
id = "c1"
customer = "acme"
rate_card = "std"
starts = "2026-01-01T00:00:00Z"

[[contract]]
id = "c2"
customer = "acme"
rate_card = "std"
version = 1
starts = "2026-01-01T00:00:00Z"
ends = "2027-01-01T00:00:00Z"
"#;

    fn t(s: &str) -> EventTime {
        EventTime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn versions_follow_the_event_time_unless_pinned() {
        let cat = from_toml_str(GOOD).unwrap();
        let c1 = &cat.contracts[cat.contract("c1").unwrap().ix()];
        let c2 = &cat.contracts[cat.contract("c2").unwrap().ix()];
        assert_eq!(
            cat.version_at(c1, t("2026-05-31T23:59:59Z"))
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            cat.version_at(c1, t("2026-06-01T00:00:00Z"))
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            cat.version_at(c2, t("2026-07-01T00:00:00Z"))
                .unwrap()
                .version,
            1
        );
        assert!(cat.version_at(c1, t("2025-12-31T00:00:00Z")).is_none());
    }

    #[test]
    fn the_versions_over_a_range_are_those_in_effect_at_some_instant_of_it() {
        let cat = from_toml_str(GOOD).unwrap();
        let c1 = &cat.contracts[cat.contract("c1").unwrap().ix()];
        let c2 = &cat.contracts[cat.contract("c2").unwrap().ix()];
        let may = (t("2026-05-01T00:00:00Z"), t("2026-06-01T00:00:00Z"));
        let june = (t("2026-06-01T00:00:00Z"), t("2026-07-01T00:00:00Z"));
        assert_eq!(cat.versions_over(c1, may.0, may.1), vec![1]);
        assert_eq!(cat.versions_over(c1, june.0, june.1), vec![2]);
        // A range the change falls inside has both; an instant before the end is enough.
        let spanning = (t("2026-05-31T23:59:59Z"), t("2026-06-01T00:00:00.001Z"));
        assert_eq!(cat.versions_over(c1, spanning.0, spanning.1), vec![1, 2]);
        // A pinned contract has its version only.
        assert_eq!(cat.versions_over(c2, may.0, june.1), vec![1]);
    }

    #[test]
    fn region_specific_prices_win_over_the_default() {
        let cat = from_toml_str(GOOD).unwrap();
        let c2 = &cat.contracts[cat.contract("c2").unwrap().ix()];
        let sku = cat.sku("tokens").unwrap();
        let eu = cat.region("eu");
        let at = t("2026-03-01T00:00:00Z");
        assert_eq!(
            cat.price(cat.price_for(c2, sku, eu, at).unwrap())
                .model
                .name(),
            "per_unit"
        );
        assert_eq!(
            cat.price(cat.price_for(c2, sku, None, at).unwrap())
                .model
                .name(),
            "graduated"
        );
    }

    #[test]
    fn contract_terms_and_taxes_load() {
        let text = GOOD.replace(
            "[[customer]]\nid = \"acme\"\n",
            "[[tax]]\nid = \"de\"\nname = \"VAT DE\"\nrate = \"0.19\"\n\n[[customer]]\nid = \"acme\"\ntax = \"de\"\n",
        ).replace(
            "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n",
            "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\nminimum_spend = \"100\"\nmaximum_spend = \"1000.50\"\n\
             [[contract.fee]]\nname = \"platform\"\namount = \"49\"\n\
             [[contract.discount]]\nsku = \"tokens\"\npercent = \"12.5\"\n\
             [[contract.discount]]\nname = \"launch\"\namount = \"5\"\nfrom = \"2026-02-01T00:00:00Z\"\nuntil = \"2026-03-01T00:00:00Z\"\n",
        );
        let c = from_toml_str(&text).unwrap();
        assert_eq!(c.customers[0].tax, Some(TaxIdx(0)));
        assert_eq!(c.taxes[0].rate, UnitPrice::parse("0.19").unwrap());
        let t = &c.contracts[0].terms;
        assert_eq!(
            t.fees,
            vec![("platform".to_string(), Amount::parse_price("49").unwrap())]
        );
        assert_eq!(t.minimum_spend, Some(Amount::parse_price("100").unwrap()));
        assert_eq!(
            t.maximum_spend,
            Some(Amount::parse_price("1000.5").unwrap())
        );
        assert_eq!(t.discounts[0].sku, c.sku("tokens"));
        assert_eq!(
            t.discounts[0].off,
            DiscountOff::Percent(UnitPrice::parse("0.125").unwrap())
        );
        assert_eq!(t.discounts[1].name, "launch");
        assert!(
            !t.discounts[1].applies_in(EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap())
        );
        assert!(
            t.discounts[1].applies_in(EventTime::parse_rfc3339("2026-02-01T00:00:00Z").unwrap())
        );
        assert!(
            !t.discounts[1].applies_in(EventTime::parse_rfc3339("2026-03-01T00:00:00Z").unwrap())
        );
    }

    #[test]
    fn bad_contract_terms_name_the_fix() {
        let with = |terms: &str| {
            let text = GOOD.replace(
                "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n",
                &format!("rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n{terms}"),
            );
            from_toml_str(&text)
                .unwrap_err()
                .0
                .iter()
                .map(|e| format!("{}: {} / {}", e.entry, e.message, e.fix))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let e = with("minimum_spend = \"10.001\"\n");
        assert!(
            e.contains("more fractional digits than USD allows (2)"),
            "{e}"
        );
        let e = with("minimum_spend = \"10\"\nmaximum_spend = \"5\"\n");
        assert!(
            e.contains("maximum_spend 5 is below minimum_spend 10"),
            "{e}"
        );
        let e = with("[[contract.discount]]\npercent = \"10\"\namount = \"5\"\n");
        assert!(e.contains("exactly one of percent and amount"), "{e}");
        let e = with("[[contract.discount]]\npercent = \"110\"\n");
        assert!(e.contains("not between 0 and 100"), "{e}");
        let e = with("[[contract.discount]]\nsku = \"nope\"\namount = \"1\"\n");
        assert!(e.contains("unknown sku `nope`"), "{e}");
        let e = with("[[contract.fee]]\nname = \"x\"\namount = \"-1\"\n");
        assert!(e.contains("negative"), "{e}");
        let text = GOOD.replace(
            "[[customer]]\nid = \"acme\"\n",
            "[[customer]]\nid = \"acme\"\ntax = \"mars\"\n",
        );
        let e = from_toml_str(&text).unwrap_err().0;
        assert!(e[0].message.contains("unknown tax `mars`") && e[0].fix.contains("[[tax]]"));
    }

    #[test]
    fn errors_name_the_entry_and_the_fix() {
        let bad = GOOD.replace("up_to = \"1000\"", "up_to = 0.5").replace(
            "customer = \"acme\"\nrate_card = \"std\"\nstarts",
            "customer = \"nobody\"\nrate_card = \"std\"\nstarts",
        );
        let errs = from_toml_str(&bad).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|e| e.contains("TOML float")), "{text:?}");
        let bad = GOOD.replace(
            "customer = \"acme\"\nrate_card = \"std\"\nstarts",
            "customer = \"nobody\"\nrate_card = \"std\"\nstarts",
        );
        let errs = from_toml_str(&bad).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].entry, "contract \"c1\"");
        assert!(errs[0].message.contains("unknown customer `nobody`"));
        assert!(errs[0].fix.contains("[[customer]]"));
    }

    #[test]
    fn a_published_version_cannot_be_repeated_or_reordered() {
        let bad = GOOD.replace(
            "version = 2\neffective_from = \"2026-06-01T00:00:00Z\"",
            "version = 1\neffective_from = \"2026-06-01T00:00:00Z\"",
        );
        let errs = from_toml_str(&bad).unwrap_err().0;
        assert!(
            errs.iter()
                .any(|e| e.message == "version defined twice" && e.fix.contains("immutable")),
            "{errs:?}"
        );
        let bad = GOOD.replace("2026-06-01T00:00:00Z", "2025-06-01T00:00:00Z");
        let errs = from_toml_str(&bad).unwrap_err().0;
        assert!(
            errs.iter()
                .any(|e| e.message.contains("is not after version 1")),
            "{errs:?}"
        );
    }

    #[test]
    fn tier_shapes_are_checked() {
        let bad = GOOD.replace(
            "{ unit_price = \"0.005\" }",
            "{ up_to = \"500\", unit_price = \"0.005\" }",
        );
        let errs = from_toml_str(&bad).unwrap_err().0;
        assert!(
            errs.iter()
                .any(|e| e.message.contains("last tier has an up_to")),
            "{errs:?}"
        );
        let bad = GOOD.replace("model = \"graduated\"", "model = \"stairs\"");
        assert!(from_toml_str(&bad)
            .unwrap_err()
            .0
            .iter()
            .any(|e| e.message.contains("unknown model `stairs`")));
    }

    #[test]
    fn meter_and_fee_limit_mistakes_name_the_fix() {
        let base = crate::fixtures::CATALOG;
        let messages = |toml: &str| -> Vec<String> {
            from_toml_str(toml)
                .unwrap_err()
                .0
                .iter()
                .map(|e| format!("{} / {}", e.message, e.fix))
                .collect()
        };
        let m = messages(&base.replace("unique_by = \"user_id\"\n", ""));
        assert!(m.iter().any(|e| e.contains("needs unique_by")), "{m:?}");
        let m = messages(&base.replace(
            "aggregation = \"max\"",
            "aggregation = \"max\"\nunique_by = \"x\"",
        ));
        assert!(m.iter().any(|e| e.contains("remove unique_by")), "{m:?}");
        let m = messages(&base.replace("aggregation = \"max\"", "aggregation = \"peak\""));
        assert!(m.iter().any(|e| e.contains("\"unique_count\"")), "{m:?}");
        // A percentage price with limits, then broken three ways.
        let with = |limits: &str| {
            base.replace(
                "[[rate_card.price]]\nsku = \"seats\"\nmodel = \"per_unit\"\nunit_price = \"10\"",
                &format!("[[rate_card.price]]\nsku = \"seats\"\nmodel = \"percentage\"\npercent = \"2.9\"\nfixed_fee = \"0.30\"\n{limits}"),
            )
        };
        let ok = from_toml_str(&with("min_fee = \"0.50\"\nmax_fee = \"5\"")).unwrap();
        let seats = ok.sku("seats").unwrap();
        let limited = ok.prices.iter().filter(|p| p.sku == seats).any(|p| {
            matches!(&p.model, PriceModel::Percentage(x) if x.min_fee.is_some() && x.max_fee.is_some())
        });
        assert!(limited);
        let m = messages(&with("min_fee = \"6\"\nmax_fee = \"5\""));
        assert!(m.iter().any(|e| e.contains("above max_fee")), "{m:?}");
        let m = messages(&with("min_fee = \"0.5\"\nfree_events = 3"));
        assert!(
            m.iter()
                .any(|e| e.contains("drop free_units and free_events")),
            "{m:?}"
        );
        let m = messages(&with("max_fee = \"-1\""));
        assert!(
            m.iter().any(|e| e.contains("must not be negative")),
            "{m:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let bad = GOOD.replace("unit = \"tokens\"", "unit = \"tokens\"\nunits = \"x\"");
        let errs = from_toml_str(&bad).unwrap_err().0;
        assert!(
            errs[0].message.contains("unknown field `units`"),
            "{errs:?}"
        );
    }
}
