//! Marketplace listings (`[[marketplace]]`) and the contracts sold through them
//! (`[contract.marketplace]`), checked against what each marketplace's metering API accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::format::*;
use crate::catalog::model::*;
use crate::money::Quantity;

/// AWS product codes: what `BatchMeterUsage` accepts (`^[-a-zA-Z0-9/=:_.@]*$`, ≤ 255).
fn aws_product_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/=:_.@".contains(c))
}

/// What is wrong with a dimension's `allocation_tags`, with the fix. AWS takes 1 to 5 tags per
/// allocation, each key 1–100 characters of `^[a-zA-Z0-9+ -=._:\/@]+$`.
fn allocation_problem(kind: MarketplaceKind, tags: &[String]) -> Option<(String, &'static str)> {
    if tags.is_empty() {
        return None;
    }
    if kind != MarketplaceKind::Aws {
        return Some((
            format!(
                "allocation_tags are for AWS listings; {} records take no allocations",
                kind.as_str()
            ),
            "remove allocation_tags",
        ));
    }
    if tags.len() > 5 {
        return Some((
            format!(
                "{} allocation_tags; AWS takes at most 5 tags per allocation",
                tags.len()
            ),
            "keep the 5 attributes finance splits usage by",
        ));
    }
    if let Some(bad) = tags
        .iter()
        .find(|t| !crate::marketplace::aws_tag_text(t, 100))
    {
        return Some((
            format!("allocation tag `{bad}` is not an AWS tag key"),
            "name a metadata.attributes key of 1 to 100 letters, digits, spaces and +-=._:/@",
        ));
    }
    let distinct: BTreeSet<&String> = tags.iter().collect();
    if distinct.len() != tags.len() {
        return Some((
            "an allocation tag is named twice".into(),
            "name each attribute once",
        ));
    }
    None
}

fn build_listing(l: &mut Loader, file: &Path, m: &MarketplaceDef) -> Option<Listing> {
    let entry = format!("marketplace \"{}\"", m.id);
    let Some(kind) = MarketplaceKind::parse(&m.kind) else {
        l.err(
            file,
            &entry,
            format!(
                "kind `{}` is not a marketplace meterflow exports to",
                m.kind
            ),
            "use kind = \"aws\", \"azure\" or \"gcp\"",
        );
        return None;
    };
    let product = match (kind, &m.product_code, &m.service_name) {
        (MarketplaceKind::Aws, Some(code), None) if aws_product_code(code) => code.clone(),
        (MarketplaceKind::Aws, Some(code), None) => {
            l.err(file, &entry, format!("product_code `{code}` is not an AWS Marketplace product code"), "copy the product code from the AWS Marketplace Management Portal (letters, digits and -/=:_.@, at most 255)");
            return None;
        }
        (MarketplaceKind::Aws, None, _) | (MarketplaceKind::Aws, _, Some(_)) => {
            l.err(file, &entry, "an AWS listing needs product_code (and no service_name)", "add product_code = \"<the product code from the AWS Marketplace Management Portal>\"");
            return None;
        }
        (MarketplaceKind::Gcp, None, Some(name))
            if !name.trim().is_empty() && !name.contains(char::is_whitespace) =>
        {
            name.clone()
        }
        (MarketplaceKind::Gcp, ..) => {
            l.err(file, &entry, "a GCP listing needs service_name (and no product_code)", "add service_name = \"<your product>.gcpmarketplace.<domain>\" as the Producer Portal shows it");
            return None;
        }
        (MarketplaceKind::Azure, None, None) => String::new(),
        (MarketplaceKind::Azure, ..) => {
            l.err(
                file,
                &entry,
                "an Azure listing takes no product_code or service_name (the plan is per contract)",
                "remove them, and set plan in each contract's [contract.marketplace]",
            );
            return None;
        }
    };
    let mut dimensions: Vec<Dimension> = Vec::new();
    for d in &m.dimension {
        let what = format!("{entry} dimension \"{}\"", d.dimension);
        let Some(sku) = l.catalog.sku(&d.sku) else {
            l.err(
                file,
                &what,
                format!("sku `{}` is not in the catalog", d.sku),
                "name a [[sku]] of the catalog",
            );
            continue;
        };
        if !l.catalog.skus[sku.ix()].aggregation.is_additive() {
            l.err(
                file,
                &what,
                format!("sku `{}` is not a sum or count meter", d.sku),
                "marketplaces are sent usage per hour; meter what you send with a sum or count SKU",
            );
            continue;
        }
        let name = d.dimension.trim();
        if name.is_empty() || name.len() > 255 {
            l.err(
                file,
                &what,
                "dimension is empty or longer than 255 characters",
                "copy the dimension's API name from the marketplace listing",
            );
            continue;
        }
        let unit_size = match &d.unit_size {
            None => Quantity::parse("1").expect("one"),
            Some(t) => match l.decimal(file, &what, "unit_size", t, Quantity::parse) {
                Some(q) if q > Quantity::ZERO => q,
                Some(q) => {
                    l.err(file, &what, format!("unit_size {q} is not positive"), "write how many SKU units make one marketplace unit, e.g. unit_size = \"1000\"");
                    continue;
                }
                None => continue,
            },
        };
        if dimensions.iter().any(|x| x.sku == sku || x.name == name) {
            l.err(
                file,
                &what,
                "the listing meters this SKU or dimension twice",
                "give each SKU one dimension, and each dimension one SKU",
            );
            continue;
        }
        let allocation_tags = d.allocation_tags.clone().unwrap_or_default();
        if let Some((message, fix)) = allocation_problem(kind, &allocation_tags) {
            l.err(file, &what, message, fix);
            continue;
        }
        dimensions.push(Dimension {
            sku,
            name: name.to_string(),
            unit_size,
            allocation_tags,
        });
    }
    Some(Listing {
        id: m.id.clone(),
        kind,
        product,
        dimensions,
    })
}

/// Checks one contract's `[contract.marketplace]` against its listing's marketplace.
fn build_account(
    l: &mut Loader,
    file: &Path,
    entry: &str,
    m: &ContractMarketplaceDef,
) -> Option<MarketplaceAccount> {
    let Some(listing) = l
        .catalog
        .marketplaces
        .iter()
        .position(|x| x.id == m.listing)
    else {
        l.err(
            file,
            entry,
            format!("marketplace listing `{}` is not in the catalog", m.listing),
            "name a [[marketplace]] id, or add that listing",
        );
        return None;
    };
    let kind = l.catalog.marketplaces[listing].kind;
    let customer = m
        .customer
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let problem = match kind {
        MarketplaceKind::Aws => match (customer, m.aws_account_id.as_deref(), &m.plan) {
            (_, _, Some(_)) => Some(("plan is for Azure", "remove plan")),
            (Some(_), Some(_), _) | (None, None, _) => Some((
                "an AWS contract needs exactly one of customer (the CustomerIdentifier from ResolveCustomer) and aws_account_id",
                "set customer = \"<CustomerIdentifier>\" or aws_account_id = \"<12 digits>\"",
            )),
            (None, Some(a), _) if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) => Some((
                "aws_account_id is not a 12-digit AWS account id",
                "write the customer's AWS account id, 12 digits",
            )),
            (Some(c), None, _) if c.len() > 255 => Some((
                "customer is longer than 255 characters",
                "copy the CustomerIdentifier ResolveCustomer returned",
            )),
            _ => None,
        },
        MarketplaceKind::Azure => match (customer, &m.plan, &m.aws_account_id) {
            (_, _, Some(_)) => Some(("aws_account_id is for AWS", "remove aws_account_id")),
            (None, _, _) | (_, None, _) => Some((
                "an Azure contract needs customer (the SaaS subscription's resourceId) and plan",
                "set customer = \"<resourceId from the Resolve API>\" and plan = \"<planId>\"",
            )),
            _ => None,
        },
        MarketplaceKind::Gcp => match (customer, &m.plan, &m.aws_account_id) {
            (_, Some(_), _) | (_, _, Some(_)) => Some((
                "plan and aws_account_id are not for GCP",
                "remove them",
            )),
            (Some(c), ..)
                if ["project:", "projectNumber:", "apiKey:"]
                    .iter()
                    .any(|p| c.starts_with(p) && c.len() > p.len()) =>
            {
                None
            }
            _ => Some((
                "a GCP contract needs customer: the consumerId (`project:<id>`, `projectNumber:<n>` or `apiKey:<key>`)",
                "set customer = \"project:<the customer's project id>\" from the procurement account",
            )),
        },
    };
    if let Some((message, fix)) = problem {
        l.err(file, entry, message, fix);
        return None;
    }
    Some(MarketplaceAccount {
        listing,
        customer: customer.unwrap_or_default().to_string(),
        aws_account_id: m.aws_account_id.clone(),
        plan: m.plan.clone(),
    })
}

pub(super) fn build_marketplaces(l: &mut Loader, files: &[(PathBuf, CatalogFile)]) {
    let mut ids = BTreeSet::new();
    for (file, f) in files {
        for m in &f.marketplace {
            if !ids.insert(m.id.clone()) {
                l.err(
                    file,
                    format!("marketplace \"{}\"", m.id),
                    "defined twice",
                    "give each listing one definition and its own id",
                );
                continue;
            }
            if let Some(listing) = build_listing(l, file, m) {
                l.catalog.marketplaces.push(listing);
            }
        }
    }
    for (file, f) in files {
        for c in &f.contract {
            let Some(m) = &c.marketplace else { continue };
            let entry = format!("contract \"{}\" marketplace", c.id);
            let account = build_account(l, file, &entry, m);
            if let Some(k) = l.catalog.contracts.iter_mut().find(|k| k.id == c.id) {
                k.marketplace = account;
            }
        }
    }
}
