use proptest::prelude::*;

use super::*;
use crate::money::{Amount, UnitPrice};

fn q(s: &str) -> Quantity {
    Quantity::parse(s).unwrap()
}
fn p(s: &str) -> UnitPrice {
    UnitPrice::parse(s).unwrap()
}
fn a(s: &str) -> Amount {
    Amount::parse_price(s).unwrap()
}
fn tier(up_to: Option<&str>, price: &str, fee: &str) -> Tier {
    Tier {
        up_to: up_to.map(q),
        unit_price: p(price),
        flat_fee: a(fee),
    }
}

/// 0..=5 at 1.00 (+10 fee), 5..=10 at 0.50 (+2 fee), beyond at 0.10.
fn three_tiers() -> Vec<Tier> {
    vec![
        tier(Some("5"), "1", "10"),
        tier(Some("10"), "0.5", "2"),
        tier(None, "0.1", "0"),
    ]
}

fn one(model: &PriceModel, quantity: &str) -> Amount {
    price_period(&[Segment {
        model,
        quantity: q(quantity),
        events: 0,
        fee_adjustment: Amount::ZERO,
    }])
    .total()
}

#[test]
fn per_unit_is_quantity_times_price() {
    let m = PriceModel::PerUnit {
        unit_price: p("0.000002"),
    };
    assert_eq!(one(&m, "1500000"), a("3"));
    assert_eq!(one(&m, "0.5"), a("0.000001"));
    assert_eq!(one(&m, "0"), a("0"));
}

#[test]
fn graduated_bounds_are_inclusive() {
    let m = PriceModel::Graduated {
        tiers: three_tiers(),
    };
    // Zero usage still pays the first tier's flat fee.
    assert_eq!(one(&m, "0"), a("10"));
    // Exactly at the bound stays in tier 1: 5 × 1 + 10.
    assert_eq!(one(&m, "5"), a("15"));
    // Just above enters tier 2 and pays its fee: 15 + 0.001 × 0.5 + 2.
    assert_eq!(one(&m, "5.001"), a("17.0005"));
    // 15 + (5 × 0.5 + 2) + (2 × 0.1).
    assert_eq!(one(&m, "12"), a("19.7"));
}

#[test]
fn volume_prices_everything_at_the_reached_tier() {
    let m = PriceModel::Volume {
        tiers: three_tiers(),
    };
    assert_eq!(one(&m, "0"), a("10"));
    assert_eq!(one(&m, "5"), a("15"));
    assert_eq!(one(&m, "5.001"), a("4.5005"));
    assert_eq!(one(&m, "12"), a("1.2"));
}

#[test]
fn a_version_change_mid_period_continues_the_tier_position() {
    let v1 = PriceModel::Graduated {
        tiers: three_tiers(),
    };
    let v2 = PriceModel::Graduated {
        tiers: vec![
            tier(Some("5"), "2", "10"),
            tier(Some("10"), "1", "2"),
            tier(None, "0.2", "0"),
        ],
    };
    // 4 units under v1 (tier 1), then 4 under v2: 1 more in tier 1 at 2.00, 3 in tier 2 at 1.00.
    let charge = price_period(&[
        Segment {
            model: &v1,
            quantity: q("4"),
            events: 0,
            fee_adjustment: Amount::ZERO,
        },
        Segment {
            model: &v2,
            quantity: q("4"),
            events: 0,
            fee_adjustment: Amount::ZERO,
        },
    ]);
    assert_eq!(charge.total(), a("4") + a("10") + a("2") + a("3") + a("2"));
    // The first tier's fee is charged once, by the first segment only.
    let fees: Vec<_> = charge.tiers.iter().map(|t| (t.segment, t.tier)).collect();
    assert_eq!(fees, vec![(0, 0), (1, 0), (1, 1)]);
}

#[test]
fn volume_across_versions_uses_the_period_total() {
    let v1 = PriceModel::Volume {
        tiers: three_tiers(),
    };
    let v2 = PriceModel::Volume {
        tiers: vec![tier(Some("5"), "2", "1"), tier(None, "0.2", "3")],
    };
    let charge = price_period(&[
        Segment {
            model: &v1,
            quantity: q("4"),
            events: 0,
            fee_adjustment: Amount::ZERO,
        },
        Segment {
            model: &v2,
            quantity: q("4"),
            events: 0,
            fee_adjustment: Amount::ZERO,
        },
    ]);
    // total 8: v1 tier 2 (0.5) for 4, v2 tier 2 (0.2) for 4, plus v2's tier-2 fee once.
    assert_eq!(charge.total(), a("2") + a("0.8") + a("3"));
}

#[test]
fn net_negative_usage_is_priced_at_zero() {
    let m = PriceModel::PerUnit { unit_price: p("1") };
    assert_eq!(one(&m, "-3"), a("0"));
}

fn tiers_strategy() -> impl Strategy<Value = Vec<Tier>> {
    (
        1usize..5,
        proptest::collection::vec((1i64..1000, 0i64..5000, 0i64..3000), 5),
    )
        .prop_map(|(n, raw)| {
            let mut bound = 0i128;
            raw.into_iter()
                .take(n)
                .enumerate()
                .map(|(i, (width, price, fee))| {
                    bound += width as i128 * 1_000_000_000;
                    Tier {
                        up_to: if i + 1 == n {
                            None
                        } else {
                            Some(Quantity(bound))
                        },
                        unit_price: UnitPrice(price as i128 * 1_000_000),
                        flat_fee: Amount(fee as i128 * 10_000_000_000_000_000),
                    }
                })
                .collect()
        })
}

proptest! {
    #[test]
    fn graduated_total_is_the_sum_of_tier_slices(tiers in tiers_strategy(), units in 0i64..10_000, frac in 0i64..1_000_000_000) {
        let qty = Quantity(units as i128 * 1_000_000_000 + frac as i128);
        let m = PriceModel::Graduated { tiers: tiers.clone() };
        let charge = price_period(&[Segment { model: &m, quantity: qty, events: 0, fee_adjustment: Amount::ZERO }]);
        let slices: Quantity = charge.tiers.iter().map(|t| t.quantity).sum();
        prop_assert_eq!(slices, qty);
        let by_hand: Amount = charge.tiers.iter().map(|t| tiers[t.tier].unit_price.times(t.quantity)).sum::<Amount>()
            + charge.tiers.iter().filter(|t| t.tier == 0 || t.quantity > Quantity::ZERO).map(|t| tiers[t.tier].flat_fee).sum::<Amount>();
        prop_assert_eq!(charge.total(), by_hand);
    }

    #[test]
    fn graduated_and_per_unit_are_monotonic(tiers in tiers_strategy(), x in 0i64..5_000, y in 0i64..5_000) {
        let (lo, hi) = (Quantity::from_units(x.min(y)), Quantity::from_units(x.max(y)));
        for m in [PriceModel::Graduated { tiers: tiers.clone() }, PriceModel::PerUnit { unit_price: tiers[0].unit_price }] {
            let at = |v| price_period(&[Segment { model: &m, quantity: v, events: 0, fee_adjustment: Amount::ZERO }]).total();
            prop_assert!(at(lo) <= at(hi));
        }
    }

    #[test]
    fn splitting_a_segment_under_one_version_changes_nothing(tiers in tiers_strategy(), x in 0i64..5_000, y in 0i64..5_000) {
        let m = PriceModel::Graduated { tiers };
        let whole = price_period(&[Segment { model: &m, quantity: Quantity::from_units(x + y), events: 0, fee_adjustment: Amount::ZERO }]).total();
        let split = price_period(&[Segment { model: &m, quantity: Quantity::from_units(x), events: 0, fee_adjustment: Amount::ZERO }, Segment { model: &m, quantity: Quantity::from_units(y), events: 0, fee_adjustment: Amount::ZERO }]).total();
        prop_assert_eq!(whole, split);
    }
}

fn package(size: &str, price: &str, free: &str, round_up: bool) -> PriceModel {
    PriceModel::Package(Package {
        size: q(size),
        price: p(price),
        free_units: q(free),
        round_up,
    })
}

#[test]
fn package_charges_a_started_package_whole_by_default() {
    let m = package("1000", "2.5", "0", true);
    assert_eq!(one(&m, "0"), a("0"));
    assert_eq!(one(&m, "0.001"), a("2.5"));
    assert_eq!(one(&m, "1000"), a("2.5"));
    assert_eq!(one(&m, "1000.001"), a("5"));
}

#[test]
fn package_rounding_down_charges_complete_packages_only() {
    let m = package("1000", "2.5", "0", false);
    assert_eq!(one(&m, "999.999"), a("0"));
    assert_eq!(one(&m, "1999"), a("2.5"));
    assert_eq!(one(&m, "2000"), a("5"));
}

#[test]
fn package_free_units_come_first() {
    let m = package("100", "1", "500", true);
    assert_eq!(one(&m, "500"), a("0"));
    assert_eq!(one(&m, "500.5"), a("1"));
    assert_eq!(one(&m, "600"), a("1"));
    assert_eq!(one(&m, "601"), a("2"));
}

#[test]
fn package_carries_the_position_across_a_rate_change() {
    // 600 units at v1 (2.50 per 1000) start package 1; 600 more at v2 (3.00) complete it and
    // start package 2, which v2 pays for.
    let (v1, v2) = (
        package("1000", "2.5", "0", true),
        package("1000", "3", "0", true),
    );
    let c = price_period(&[
        Segment {
            model: &v1,
            quantity: q("600"),
            events: 0,
            fee_adjustment: Amount::ZERO,
        },
        Segment {
            model: &v2,
            quantity: q("600"),
            events: 0,
            fee_adjustment: Amount::ZERO,
        },
    ]);
    assert_eq!(c.total(), a("5.5"));
}

proptest! {
    /// Package totals never fall as usage grows, and equal packages × price in one segment.
    #[test]
    fn package_is_monotonic(units in 0u64..100_000, extra in 0u64..10_000, free in 0u64..2_000, up in any::<bool>()) {
        let m = package("250", "1.25", &free.to_string(), up);
        let x = one(&m, &units.to_string());
        let y = one(&m, &(units + extra).to_string());
        prop_assert!(y >= x);
        let billable = units.saturating_sub(free);
        let n = if up { billable.div_ceil(250) } else { billable / 250 };
        let cents = n * 125;
        prop_assert_eq!(x, a(&format!("{}.{:02}", cents / 100, cents % 100)));
    }
}

fn percentage(pct: &str, fee: &str, free_units: &str, free_events: i64) -> PriceModel {
    PriceModel::Percentage(Percentage {
        rate: UnitPrice(p(pct).0 / 100),
        fixed_fee: a(fee),
        free_units: q(free_units),
        free_events,
        min_fee: None,
        max_fee: None,
    })
}

fn with_events(model: &PriceModel, quantity: &str, events: i64) -> Amount {
    price_period(&[Segment {
        model,
        quantity: q(quantity),
        events,
        fee_adjustment: Amount::ZERO,
    }])
    .total()
}

#[test]
fn percentage_is_rate_times_amount_plus_a_fee_per_transaction() {
    // Three payments totalling 100.00 at 2.9% + 0.30: 2.90 + 0.90.
    let m = percentage("2.9", "0.30", "0", 0);
    assert_eq!(with_events(&m, "100", 3), a("3.8"));
    assert_eq!(with_events(&m, "0", 0), a("0"));
    // The first transaction is free of the fee; the first 50.00 of the percentage.
    assert_eq!(
        with_events(&percentage("2.9", "0.30", "0", 1), "100", 3),
        a("3.5")
    );
    assert_eq!(
        with_events(&percentage("2.9", "0.30", "50", 0), "100", 3),
        a("2.35")
    );
}

#[test]
fn percentage_free_allowances_carry_across_a_rate_change() {
    let (v1, v2) = (
        percentage("3", "0.25", "40", 2),
        percentage("2", "0.20", "40", 2),
    );
    let c = price_period(&[
        Segment {
            model: &v1,
            quantity: q("30"),
            events: 1,
            fee_adjustment: Amount::ZERO,
        },
        Segment {
            model: &v2,
            quantity: q("70"),
            events: 3,
            fee_adjustment: Amount::ZERO,
        },
    ]);
    // v1: 30 of amount all free, 1 event free. v2: 10 more free, 60 × 2% = 1.20; 1 more free
    // event, then 2 × 0.20 = 0.40.
    assert_eq!(c.total(), a("1.6"));
}

#[test]
fn per_transaction_limits_bound_each_transaction_not_the_period() {
    use super::percentage::limit_adjustment;
    // 2.9% + 0.30, at least 0.50 and at most 5.00 per transaction.
    let PriceModel::Percentage(mut m) = percentage("2.9", "0.30", "0", 0) else {
        unreachable!()
    };
    m.min_fee = Some(a("0.5"));
    m.max_fee = Some(a("5"));
    // 2.00 pays 0.358 → 0.50; 10.00 pays 0.59, within the bounds; 500.00 pays 14.80 → 5.00.
    assert_eq!(limit_adjustment(&m, q("2")), a("0.142"));
    assert_eq!(limit_adjustment(&m, q("10")), a("0"));
    assert_eq!(limit_adjustment(&m, q("500")), a("-9.8"));
    // Either side of the maximum: 162.06 pays 4.99974, 162.07 pays 5.00003 → 5.00.
    assert_eq!(limit_adjustment(&m, q("162.06")), Amount::ZERO);
    assert_eq!(limit_adjustment(&m, q("162.07")), a("-0.00003"));
    // The period: three transactions of 2, 10 and 500 pay 0.50 + 0.59 + 5.00 = 6.09.
    let model = PriceModel::Percentage(m.clone());
    let adjustments = [q("2"), q("10"), q("500")]
        .iter()
        .map(|x| limit_adjustment(&m, *x))
        .fold(Amount::ZERO, |s, x| s + x);
    let total = price_period(&[Segment {
        model: &model,
        quantity: q("512"),
        events: 3,
        fee_adjustment: adjustments,
    }])
    .total();
    assert_eq!(total, a("6.09"));
}
