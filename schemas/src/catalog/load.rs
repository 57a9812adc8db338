//! Loading and checking a catalog directory.
//!
//! Every `*.toml` file below the directory (sorted by path) may hold any of the arrays
//! `[[sku]]`, `[[customer]]`, `[[contract]]` and `[[rate_card]]`. All problems are collected, each
//! naming the file, the entry and the fix, so one `meterflow catalog check` run shows them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod contracts;
mod format;
mod marketplaces;
mod rate_cards;

use super::model::*;
use crate::money::UnitPrice;
use contracts::build_contracts;
pub use format::{CatalogError, CatalogErrors};
use format::{CatalogFile, Loader};
use marketplaces::build_marketplaces;
use rate_cards::build_rate_cards;

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
            Err(e) => loader.err(&file, "file", e.trim().to_string(), "fix the TOML at the line shown; allowed arrays are [[sku]], [[customer]], [[contract]], [[rate_card]], [[tax]], [[marketplace]]"),
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

/// Every `*.toml` file below `dir` (unsorted), hidden files and directories left out: a
/// Kubernetes ConfigMap volume holds each file twice more under `..data/` and `..<timestamp>/`,
/// and editors and git keep their own copies in dot-directories.
pub fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
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
                segment: c.segment.clone().unwrap_or_default(),
            });
        }
    }
    l.catalog.index();
    build_rate_cards(l, files);
    l.catalog.index();
    build_contracts(l, files);
    build_marketplaces(l, files);
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
            if rate.is_negative() || rate > UnitPrice::ONE {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Amount;

    /// A ConfigMap mounted as a volume: `catalog.toml -> ..data/catalog.toml`,
    /// `..data -> ..2026_12_05_10_00_00.1/`, which holds the file.
    #[test]
    fn a_catalog_mounted_from_a_configmap_is_read_once() {
        let dir = std::env::temp_dir().join(format!("meterflow-configmap-{}", std::process::id()));
        let stamped = dir.join("..2026_12_05_10_00_00.1");
        std::fs::create_dir_all(&stamped).unwrap();
        std::fs::write(stamped.join("catalog.toml"), GOOD).unwrap();
        std::os::unix::fs::symlink("..2026_12_05_10_00_00.1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/catalog.toml", dir.join("catalog.toml")).unwrap();
        let mut files = Vec::new();
        collect_toml(&dir, &mut files).unwrap();
        assert_eq!(files, [dir.join("catalog.toml")]);
        let catalog = load_dir(&dir).unwrap();
        assert_eq!(catalog.skus.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use crate::pricing::PriceModel;
    use crate::time::EventTime;

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
             [[contract.fee]]\nname = \"onboarding\"\namount = \"0\"\nssp = \"15\"\n\
             [[contract.fee]]\nname = \"support\"\namount = \"1200\"\nterm_months = 12\n\
             [[contract.discount]]\nsku = \"tokens\"\npercent = \"12.5\"\n\
             [[contract.discount]]\nname = \"launch\"\namount = \"5\"\nfrom = \"2026-02-01T00:00:00Z\"\nuntil = \"2026-03-01T00:00:00Z\"\n",
        );
        let c = from_toml_str(&text).unwrap();
        assert_eq!(c.customers[0].tax, Some(TaxIdx(0)));
        assert_eq!(c.taxes[0].rate, UnitPrice::parse("0.19").unwrap());
        let t = &c.contracts[0].terms;
        assert_eq!(
            t.fees,
            vec![
                Fee::new("platform", Amount::parse_price("49").unwrap()),
                Fee {
                    ramp: false,
                    name: "onboarding".into(),
                    amount: Amount::ZERO,
                    ssp: Amount::parse_price("15").unwrap(),
                    changes: vec![],
                }
            ]
        );
        assert_eq!(
            t.term_fees,
            vec![TermFee::new(
                "support",
                Amount::parse_price("1200").unwrap(),
                12,
                EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
            )]
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
        let e = with("[[contract.fee]]\nname = \"x\"\namount = \"1\"\nterm_months = 0\n");
        assert!(
            e.contains("fee \"x\": term_months = 0 is not from 1 to 120")
                && e.contains("12 for an annual fee"),
            "{e}"
        );
        let e = with(
            "[[contract.fee]]\nname = \"x\"\namount = \"1\"\nstarts = \"2026-02-01T00:00:00Z\"\n",
        );
        assert!(e.contains("fee \"x\" has starts but no term_months"), "{e}");
        let e = with("[[contract.fee]]\nname = \"x\"\namount = \"1\"\nterm_months = 12\nstarts = \"2025-12-01T00:00:00Z\"\n");
        assert!(
            e.contains("outside the contract") && e.contains("while the contract runs"),
            "{e}"
        );
        let e = with("[[contract.fee]]\nname = \"x\"\namount = \"1\"\n[[contract.fee]]\nname = \"x\"\namount = \"2\"\nterm_months = 12\n");
        assert!(e.contains("two fees are named \"x\""), "{e}");
        let e = with("[[contract.fee]]\nname = \"x\"\namount = \"10\"\nssp = \"0\"\n");
        assert!(
            e.contains("fee \"x\" bills 10 but its ssp is 0") && e.contains("sells for on its own"),
            "{e}"
        );
        let change =
            |from: &str| format!("[[contract.fee.change]]\nfrom = \"{from}\"\namount = \"20\"\n");
        let fee = "[[contract.fee]]\nname = \"x\"\namount = \"10\"\n";
        let e = with(&format!("{fee}{}", change("2025-12-01T00:00:00Z")));
        assert!(
            e.contains("fee \"x\": change from 2025-12-01T00:00:00.000Z is not while the fee runs")
                && e.contains("write the first price as the fee's amount"),
            "{e}"
        );
        let e = with(&format!(
            "{fee}{}{}",
            change("2026-05-01T00:00:00Z"),
            change("2026-04-01T00:00:00Z")
        ));
        assert!(e.contains("is not after the change before it"), "{e}");
        let e = with(&format!(
            "{fee}term_months = 12\nstarts = \"2026-03-01T00:00:00Z\"\n{}",
            change("2026-02-01T00:00:00Z")
        ));
        assert!(e.contains("is not after its first term starts"), "{e}");
        let e = with("[[contract.fee]]\nname = \"x\"\namount = \"0\"\nssp = \"-5\"\n");
        assert!(e.contains("fee \"x\" ssp -5 is negative"), "{e}");
        let e = with(&format!(
            "{fee}ramp = true\n{}",
            change("2026-05-01T00:00:00Z")
        ));
        assert!(
            e.contains("fee \"x\" is a ramp but the contract has no ends")
                && e.contains("give the contract its ends"),
            "{e}"
        );
        let e = with(
            "ends = \"2027-01-01T00:00:00Z\"\n[[contract.fee]]\nname = \"x\"\namount = \"0\"\nramp = true\n",
        );
        assert!(
            e.contains("fee \"x\" is a ramp that starts free, with no ssp"),
            "{e}"
        );
        let credit = "[[contract.credit]]\nname = \"w\"\namount = \"300\"\ngranted = \"2026-01-01T00:00:00Z\"\n";
        let right = format!("{credit}material_right = true\n");
        let e = with(&format!("{fee}{right}"));
        assert!(
            e.contains("credit \"w\" is a material right but the contract has no ends"),
            "{e}"
        );
        let e = with(&format!("ends = \"2027-01-01T00:00:00Z\"\n{right}"));
        assert!(
            e.contains("credit \"w\" is a material right but the contract has no fees")
                && e.contains("promotional = true"),
            "{e}"
        );
        let e = with(&format!("{credit}redemption = \"0.5\"\n"));
        assert!(
            e.contains("has a redemption but is not a material right"),
            "{e}"
        );
        let e = with(&format!(
            "ends = \"2027-01-01T00:00:00Z\"\n{fee}{right}redemption = \"1.5\"\n"
        ));
        assert!(
            e.contains("credit \"w\" redemption `1.5` is not above 0 and at most 1"),
            "{e}"
        );
        let e = with("[contract.renewal]\nterm_months = 12\n");
        assert!(
            e.contains("contract without `ends`") && e.contains("set `ends`"),
            "{e}"
        );
        let ends = "ends = \"2027-01-01T00:00:00Z\"\n";
        let e = with(&format!("{ends}[contract.renewal]\nterm_months = 0\n"));
        assert!(e.contains("term_months = 0 is not from 1 to 120"), "{e}");
        let e = with(&format!(
            "{ends}[contract.renewal]\nterm_months = 12\nlikelihood = \"1.5\"\n"
        ));
        assert!(e.contains("likelihood `1.5` is not from 0 to 1"), "{e}");
        let e = with(&format!("{ends}[contract.renewal]\nterm = 12\n"));
        assert!(e.contains("unknown field `term`"), "{e}");
        let ok = GOOD.replace(
            "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n",
            &format!(
                "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n{ends}\
                 [contract.renewal]\nterm_months = 12\n"
            ),
        );
        let renewal = from_toml_str(&ok).unwrap().contracts[0].renewal.unwrap();
        // A ramp's steps sell for what the fee sold for before them, unless they say otherwise;
        // a later modification's new price is its own standalone selling price.
        let stepped = |ramp: &str| {
            let text = GOOD.replace(
                "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n",
                &format!(
                    "rate_card = \"std\"\nstarts = \"2026-01-01T00:00:00Z\"\n{ends}{fee}{ramp}{}{}\
                     ssp = \"25\"\n{}",
                    change("2026-03-01T00:00:00Z"),
                    change("2026-05-01T00:00:00Z"),
                    change("2026-07-01T00:00:00Z"),
                ),
            );
            let fee = from_toml_str(&text).unwrap().contracts[0].terms.fees[0].clone();
            let ssps: Vec<String> = fee.changes.iter().map(|c| c.ssp.to_string()).collect();
            (fee.ramp, ssps.join(" "))
        };
        assert_eq!(stepped("ramp = true\n"), (true, "10 25 25".to_string()));
        assert_eq!(stepped(""), (false, "20 25 20".to_string()));
        assert_eq!(
            (renewal.term_months, renewal.likelihood),
            (12, UnitPrice::parse("1").unwrap()),
            "likelihood defaults to 1"
        );
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
