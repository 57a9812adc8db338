//! Rate cards: effective-dated versions of prices per SKU and region, and each price's model
//! (per unit, graduated, volume, package, percentage, flat), checked tier by tier.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::*;
use crate::catalog::model::*;
use crate::hashing::FxHashMap;
use crate::money::{Amount, Quantity, UnitPrice};
use crate::pricing::{Package, Percentage, PriceModel, Tier};

pub(super) fn build_rate_cards(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
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
