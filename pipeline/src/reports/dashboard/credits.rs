//! The account view's credit (prepaid, promotional and material rights): per grant, what was granted, used and is left after the
//! period shown, and whether it can still be used.

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::{minor_unit_digits, Amount, Rounding};
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::Serialize;

use meterflow_schemas::pricing::invoice::replay_credit;

use crate::reports::invoice_preview::{credit_used, PreviewLine};

/// One credit grant of a contract after the invoice period shown.
#[derive(Clone, Debug, Serialize)]
pub struct CreditBalance {
    pub contract: String,
    pub grant: String,
    /// Given free rather than prepaid (docs/revenue.md: no liability, a price concession).
    pub promotional: bool,
    /// Given free for signing, a material right (docs/revenue.md: a share of the fees,
    /// deferred until it is redeemed).
    pub material_right: bool,
    pub currency: String,
    pub granted: String,
    /// RFC 3339; usable for invoice periods starting before it. None: never expires.
    pub usable_from: String,
    pub expires: Option<String>,
    pub used: String,
    pub balance: String,
    /// `active`, `used up`, `expires after this period`, `expired` (what is left is lost), or
    /// `not yet usable`.
    pub status: &'static str,
}

/// The credit grants of `customer`'s contracts after invoice period `period` (its label):
/// the `credit` lines of every period up to it, burnt over the grants as the pipeline burns them.
pub fn credit_balances(
    lines: &[PreviewLine],
    catalog: &Catalog,
    unit: PeriodUnit,
    customer: &str,
    period: &str,
) -> Vec<CreditBalance> {
    let Some(shown) = unit.parse_label(period) else {
        return Vec::new();
    };
    let (start, end) = (shown.0, unit.end_of(shown));
    let used = credit_used(lines);
    let mut out = Vec::new();
    for contract in catalog
        .contracts
        .iter()
        .filter(|k| catalog.customers[k.customer.ix()].id == customer)
    {
        let grants = &contract.terms.credits;
        if grants.is_empty() {
            continue;
        }
        let per_period = used.get(contract.id.as_str()).cloned().unwrap_or_default();
        let replay = replay_credit(grants, &per_period, unit, Some(period));
        let currency = catalog.rate_cards[contract.rate_card.ix()].currency.clone();
        let digits = minor_unit_digits(&currency);
        let fixed = |a: Amount| a.round_to(digits, Rounding::HalfEven).format_fixed(digits);
        for (g, balance) in grants.iter().zip(replay.balances) {
            let status = if g.granted > start {
                "not yet usable"
            } else if balance <= Amount::ZERO {
                "used up"
            } else if g.expires.is_some_and(|e| e <= start) {
                "expired"
            } else if g.expires.is_some_and(|e| e <= end) {
                "expires after this period"
            } else {
                "active"
            };
            out.push(CreditBalance {
                contract: contract.id.clone(),
                grant: g.name.clone(),
                promotional: g.promotional,
                material_right: g.material_right.is_some(),
                currency: currency.clone(),
                granted: fixed(g.amount),
                usable_from: g.granted.to_string(),
                expires: g.expires.map(|e: EventTime| e.to_string()),
                used: fixed(g.amount - balance),
                balance: fixed(balance),
                status,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_schemas::catalog::from_toml_str;
    use meterflow_schemas::rows::LineKind;

    fn catalog() -> String {
        meterflow_schemas::fixtures::ONE_CONTRACT.to_string() + CREDITS
    }

    const CREDITS: &str = r#"
[[contract.credit]]
name = "launch"
amount = "100"
granted = "2026-01-01T00:00:00Z"
expires = "2026-03-01T00:00:00Z"

[[contract.credit]]
name = "annual"
amount = "500"
granted = "2026-01-01T00:00:00Z"
priority = 1

[[contract.credit]]
name = "renewal"
amount = "50"
granted = "2026-04-01T00:00:00Z"
priority = 2
"#;

    fn credit(period: &str, amount: &str) -> PreviewLine {
        PreviewLine {
            customer: "acme".into(),
            invoice_period: period.into(),
            contract: "acme-1".into(),
            kind: LineKind::Credit,
            sku: String::new(),
            service_period: period.into(),
            region: String::new(),
            events: 0,
            quantity: String::new(),
            amount: -Amount::parse(amount).unwrap(),
            currency: "USD".into(),
        }
    }

    fn shown(period: &str) -> Vec<(String, String, String, &'static str)> {
        let catalog = from_toml_str(&catalog()).unwrap();
        let lines = [
            credit("2026-01", "70"),
            credit("2026-02", "60"),
            credit("2026-03", "40"),
        ];
        credit_balances(&lines, &catalog, PeriodUnit::Month, "acme", period)
            .into_iter()
            .map(|b| (b.grant, b.used, b.balance, b.status))
            .collect()
    }

    #[test]
    fn grants_burn_by_priority_and_expire_with_what_is_left() {
        // January: 70 of the launch credit; February: its last 30, then 30 of the annual one.
        assert_eq!(
            shown("2026-01"),
            vec![
                ("launch".into(), "70.00".into(), "30.00".into(), "active"),
                ("annual".into(), "0.00".into(), "500.00".into(), "active"),
                (
                    "renewal".into(),
                    "0.00".into(),
                    "50.00".into(),
                    "not yet usable"
                ),
            ]
        );
        assert_eq!(
            shown("2026-02")[..2],
            [
                ("launch".into(), "100.00".into(), "0.00".into(), "used up"),
                ("annual".into(), "30.00".into(), "470.00".into(), "active"),
            ]
        );
        assert_eq!(shown("2026-03")[1].2, "430.00");
    }

    #[test]
    fn a_grant_left_unused_expires() {
        let catalog = from_toml_str(&catalog()).unwrap();
        let lines = [credit("2026-01", "10"), credit("2026-03", "0")];
        let at = |p| credit_balances(&lines, &catalog, PeriodUnit::Month, "acme", p);
        assert_eq!(at("2026-02")[0].status, "expires after this period");
        assert_eq!(at("2026-03")[0].status, "expired");
        assert_eq!(at("2026-03")[0].balance, "90.00");
        assert!(at("2026-03")[0]
            .expires
            .as_deref()
            .unwrap()
            .starts_with("2026-03-01"));
        assert!(
            credit_balances(&lines, &catalog, PeriodUnit::Month, "globex", "2026-03").is_empty()
        );
    }
}
