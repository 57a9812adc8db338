//! Entitlements: what a contract includes of a SKU per period, and the signals usage raises as
//! it crosses thresholds of it (50%, 90%, 100% by default), a soft limit and a hard limit.
//!
//! Rules (see `docs/entitlements.md`):
//! - Usage is counted per **service period** (when it happened), late usage included, net of
//!   corrections, summed over price regions.
//! - The allowance of a period is `included` plus, with rollover, the unused allowance of the
//!   period before (never below zero, capped at `rollover_cap`, so it never compounds beyond
//!   the cap). A period without usage leaves its whole allowance unused.
//! - A threshold signal exists while usage is at or above `percent × allowance / 100`; soft
//!   and hard limit signals while usage is at or above the limit. Signals are rows of a signed
//!   table: one `+1` when crossed, one `-1` if a correction brings usage back below.

use serde::{Deserialize, Serialize};

use crate::money::Quantity;
use crate::time::EventTime;

/// `[[contract.entitlement]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entitlement {
    pub sku: crate::ids::SkuIdx,
    /// Included quantity per period.
    pub included: Quantity,
    /// Percentages of the allowance that raise a signal, ascending.
    pub thresholds: Vec<u32>,
    /// Above it the product should warn; usage keeps being billed as overage.
    pub soft_limit: Option<Quantity>,
    /// Above it the product may block.
    pub hard_limit: Option<Quantity>,
    /// Unused allowance carries into the next period, up to `rollover_cap` (no cap: all of it).
    pub rollover: bool,
    pub rollover_cap: Option<Quantity>,
}

/// What a signal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SignalKind {
    Threshold,
    SoftLimit,
    HardLimit,
    /// Prepaid credit is burning fast enough to run out before its grants expire (for that
    /// signal, `at` is the credit left and `allowance` the average burn per period).
    CreditBurn,
    /// Usage spend is running ahead of the commitment (`minimum_spend`) prorated to how far the
    /// period has got: at this rate it is used up before the period ends (see [`spend_burn`]).
    CommitmentBurn,
    /// The same against the contract's service budget (`budget`): burn exceeds plan.
    BudgetBurn,
}

impl SignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Threshold => "threshold",
            SignalKind::SoftLimit => "soft_limit",
            SignalKind::HardLimit => "hard_limit",
            SignalKind::CreditBurn => "credit_burn",
            SignalKind::CommitmentBurn => "commitment_burn",
            SignalKind::BudgetBurn => "budget_burn",
        }
    }
    pub fn parse(text: &str) -> Option<SignalKind> {
        [
            SignalKind::Threshold,
            SignalKind::SoftLimit,
            SignalKind::HardLimit,
            SignalKind::CreditBurn,
            SignalKind::CommitmentBurn,
            SignalKind::BudgetBurn,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One signal of one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signal {
    pub kind: SignalKind,
    /// The threshold's percentage (0 for limits).
    pub percent: u32,
    /// The quantity at which it fires.
    pub at: Quantity,
    /// The period's allowance (included plus rollover).
    pub allowance: Quantity,
}

/// Each period's allowance and net usage (by start), from the first period with usage to the
/// last: the allowance is `included` plus what rolled over from the period before. `next`
/// gives the start of the period after a given one (periods without usage roll over too).
pub fn allowances(
    e: &Entitlement,
    usage: &std::collections::BTreeMap<EventTime, Quantity>,
    next: impl Fn(EventTime) -> EventTime,
) -> Vec<(EventTime, Quantity, Quantity)> {
    let mut out = Vec::new();
    let (Some(&first), Some(&last)) = (usage.keys().next(), usage.keys().next_back()) else {
        return out;
    };
    let mut rolled = Quantity::ZERO;
    let mut start = first;
    while start <= last {
        let used = usage.get(&start).copied().unwrap_or_default();
        let allowance = e.included + rolled;
        out.push((start, allowance, used));
        let unused = (allowance - used).max(Quantity::ZERO);
        rolled = if e.rollover {
            e.rollover_cap.map_or(unused, |cap| unused.min(cap))
        } else {
            Quantity::ZERO
        };
        start = next(start);
    }
    out
}

/// Every signal of every period (by start) of one contract and SKU, from its net usage per
/// period (see [`allowances`] for `next`).
pub fn signals(
    e: &Entitlement,
    usage: &std::collections::BTreeMap<EventTime, Quantity>,
    next: impl Fn(EventTime) -> EventTime,
) -> Vec<(EventTime, Signal)> {
    let mut out = Vec::new();
    for (start, allowance, used) in allowances(e, usage, next) {
        for &pct in &e.thresholds {
            let at = Quantity(allowance.0 * pct as i128 / 100);
            if used >= at && allowance > Quantity::ZERO {
                out.push((
                    start,
                    Signal {
                        kind: SignalKind::Threshold,
                        percent: pct,
                        at,
                        allowance,
                    },
                ));
            }
        }
        for (kind, limit) in [
            (SignalKind::SoftLimit, e.soft_limit),
            (SignalKind::HardLimit, e.hard_limit),
        ] {
            if let Some(at) = limit {
                if used >= at {
                    out.push((
                        start,
                        Signal {
                            kind,
                            percent: 0,
                            at,
                            allowance,
                        },
                    ));
                }
            }
        }
    }
    out
}

/// How far an event at `t` shows a contract's usage reported: the end of the hour it falls in
/// (the `reported` input of [`spend_burn`]).
pub fn reported_through(t: EventTime) -> EventTime {
    const HOUR: i64 = 3_600_000;
    EventTime((t.0.div_euclid(HOUR) + 1) * HOUR)
}

/// A spend burning faster than its plan (see [`spend_burn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burn {
    pub kind: SignalKind,
    /// Projected spend at the end of the period, in percent of the plan (above 100).
    pub projected_percent: u32,
    /// When the plan is used up at this rate (before the period ends).
    pub exhausted_at: EventTime,
}

/// Burn-rate rule for one service period `[start, end)` of a contract: usage spend `spent` so
/// far, with usage reported up to `reported` (the end of the latest hour any of the contract's
/// events in the period fall in), runs ahead of a plan prorated to that point:
/// `spent / elapsed > plan / length`. Nothing is judged before a tenth of the period has
/// elapsed (a morning's usage says little about a month). A plan already used up counts from
/// the start (`projected_percent` is then at least 100 at any point).
///
/// The rule only looks at the contract's own usage (amounts and event times), never at the
/// clock, so it is the same in every run over the same events, whatever their order.
pub fn spend_burn(
    plans: &[(SignalKind, crate::money::Amount)],
    start: EventTime,
    end: EventTime,
    spent: crate::money::Amount,
    reported: EventTime,
) -> Vec<Burn> {
    if reported <= start {
        // Nothing reported in the period yet (its usage lines may come first).
        return Vec::new();
    }
    let length = (end.0 - start.0) as i128;
    let elapsed = (reported.0.min(end.0) - start.0) as i128;
    if length <= 0 || elapsed * 10 < length || spent.0 <= 0 {
        return Vec::new();
    }
    plans
        .iter()
        .filter(|(_, plan)| plan.0 > 0 && spent.0 * length > plan.0 * elapsed)
        .map(|&(kind, plan)| Burn {
            kind,
            projected_percent: u32::try_from(spent.0 * length * 100 / (plan.0 * elapsed))
                .unwrap_or(u32::MAX),
            exhausted_at: EventTime(start.0 + (elapsed * plan.0 / spent.0) as i64),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ids::SkuIdx;
    use crate::time::PeriodUnit;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }
    fn t(s: &str) -> EventTime {
        EventTime::parse_rfc3339(s).unwrap()
    }
    fn next(t: EventTime) -> EventTime {
        let m = PeriodUnit::Month;
        m.end_of(m.period_of(t))
    }
    fn ent() -> Entitlement {
        Entitlement {
            sku: SkuIdx(0),
            included: q("1000"),
            thresholds: vec![50, 90, 100],
            soft_limit: Some(q("1200")),
            hard_limit: Some(q("1500")),
            rollover: false,
            rollover_cap: None,
        }
    }
    fn fired(e: &Entitlement, usage: &[(&str, &str)]) -> Vec<(String, SignalKind, u32, Quantity)> {
        let u: BTreeMap<EventTime, Quantity> = usage.iter().map(|(p, v)| (t(p), q(v))).collect();
        signals(e, &u, next)
            .into_iter()
            .map(|(p, s)| {
                (
                    p.to_string()[..7].to_string(),
                    s.kind,
                    s.percent,
                    s.allowance,
                )
            })
            .collect()
    }

    #[test]
    fn thresholds_fire_at_their_bound_not_before() {
        let e = ent();
        assert!(fired(&e, &[("2026-11-01T00:00:00Z", "499.999")]).is_empty());
        let at_half = fired(&e, &[("2026-11-01T00:00:00Z", "500")]);
        assert_eq!(
            at_half,
            vec![("2026-11".into(), SignalKind::Threshold, 50, q("1000"))]
        );
        let over = fired(&e, &[("2026-11-01T00:00:00Z", "1500")]);
        let kinds: Vec<_> = over.iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(
            kinds,
            vec![
                (SignalKind::Threshold, 50),
                (SignalKind::Threshold, 90),
                (SignalKind::Threshold, 100),
                (SignalKind::SoftLimit, 0),
                (SignalKind::HardLimit, 0),
            ]
        );
    }

    #[test]
    fn unused_allowance_rolls_over_up_to_the_cap_into_the_next_period_only() {
        let mut e = ent();
        e.rollover = true;
        e.rollover_cap = Some(q("300"));
        let got = fired(
            &e,
            &[
                ("2026-09-01T00:00:00Z", "100"), // 900 unused, 300 roll over
                ("2026-10-01T00:00:00Z", "650"), // allowance 1300: 650 is exactly 50%
                ("2026-12-01T00:00:00Z", "650"), // November used nothing: 300 roll into December
            ],
        );
        assert_eq!(
            got,
            vec![
                ("2026-10".into(), SignalKind::Threshold, 50, q("1300")),
                ("2026-12".into(), SignalKind::Threshold, 50, q("1300")),
            ]
        );
    }

    #[test]
    fn spend_ahead_of_the_prorated_plan_burns_and_spend_on_plan_does_not() {
        use crate::money::Amount;
        let a = |s: &str| Amount::parse_price(s).unwrap();
        let (start, end) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
        let plans = [
            (SignalKind::CommitmentBurn, a("3000")),
            (SignalKind::BudgetBurn, a("6000")),
        ];
        // Ten days in (a third), 1000 spent: exactly on the commitment's plan, not ahead.
        let ten_days = t("2026-11-11T00:00:00Z");
        assert!(spend_burn(&plans, start, end, a("1000"), ten_days).is_empty());
        // 1500: the commitment runs out on day 20 (150%); the budget is on plan at 75%.
        let burns = spend_burn(&plans, start, end, a("1500"), ten_days);
        assert_eq!(
            burns,
            vec![Burn {
                kind: SignalKind::CommitmentBurn,
                projected_percent: 150,
                exhausted_at: t("2026-11-21T00:00:00Z"),
            }]
        );
        // Both, at 4500 after ten days.
        assert_eq!(spend_burn(&plans, start, end, a("4500"), ten_days).len(), 2);
        // Nothing reported yet: nothing judged.
        assert!(spend_burn(&plans, start, end, a("9999"), EventTime::MIN).is_empty());
        // Too early to tell: two days in, however much was spent.
        let two_days = t("2026-11-03T00:00:00Z");
        assert!(spend_burn(&plans, start, end, a("9999"), two_days).is_empty());
        // Reported past the period's end counts as the whole period.
        let after = t("2026-12-05T00:00:00Z");
        assert_eq!(
            spend_burn(&plans, start, end, a("3001"), after)[0].projected_percent,
            100
        );
        assert!(spend_burn(&plans, start, end, a("3000"), after).is_empty());
    }

    #[test]
    fn a_signal_goes_away_when_usage_falls_back_below() {
        let e = ent();
        assert_eq!(fired(&e, &[("2026-11-01T00:00:00Z", "950")]).len(), 2);
        // A void of 100 takes usage to 850: only the 50% signal remains.
        assert_eq!(fired(&e, &[("2026-11-01T00:00:00Z", "850")]).len(), 1);
    }
}
