//! What the revenue schedule is made of: the invoice lines it reads, its rows (keys and
//! amounts), a contract's terms as it reads them, and the exact arithmetic it shares.

use std::collections::BTreeMap;

use crate::catalog::{CreditGrant, Fee, TermFee};
use crate::money::Amount;
use crate::rows::LineKind;
use crate::time::EventTime;

/// One current invoice line, as the schedule reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BilledLine {
    pub customer: String,
    pub contract: String,
    pub invoice_period: String,
    pub service_period: String,
    pub kind: LineKind,
    pub sku: String,
    pub amount: Amount,
    pub currency: String,
}

/// The identity of a schedule row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScheduleKey {
    pub customer_id: String,
    pub contract_id: String,
    pub obligation: String,
    pub service_period: String,
    /// The period the amounts fall in (the invoice period).
    pub period: String,
    pub currency: String,
}

/// The amounts of a schedule row. `recognised + deferred = billed + unbilled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    pub billed: Amount,
    pub recognised: Amount,
    pub deferred: Amount,
    pub unbilled: Amount,
}

impl Amounts {
    pub fn balances(&self) -> bool {
        self.recognised + self.deferred == self.billed + self.unbilled
    }

    pub fn add(&mut self, o: Amounts) {
        self.billed += o.billed;
        self.recognised += o.recognised;
        self.deferred += o.deferred;
        self.unbilled += o.unbilled;
    }
}

pub type Schedule = BTreeMap<ScheduleKey, Amounts>;

/// `a × b ÷ c` through a 256-bit product (amounts at 18 decimals overflow `i128` when
/// multiplied), rounded toward zero. The quotient must fit `i128`.
pub(crate) fn mul_div(a: i128, b: i128, c: i128) -> i128 {
    const M: u128 = u64::MAX as u128;
    let negative = (a < 0) ^ (b < 0) ^ (c < 0);
    let (a, b, c) = (a.unsigned_abs(), b.unsigned_abs(), c.unsigned_abs());
    let (a1, a0, b1, b0) = (a >> 64, a & M, b >> 64, b & M);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    let mid = (p00 >> 64) + (p01 & M) + (p10 & M);
    let lo = (p00 & M) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    let (mut rem, mut q) = (0u128, 0u128);
    for i in (0..256).rev() {
        let bit = if i >= 128 {
            (hi >> (i - 128)) & 1
        } else {
            (lo >> i) & 1
        };
        rem = (rem << 1) | bit;
        if rem >= c {
            rem -= c;
            if i < 128 {
                q |= 1 << i;
            }
        }
    }
    let q = q as i128;
    if negative {
        -q
    } else {
        q
    }
}

/// `amount × part ÷ whole`, exact to the amount's scale (rounded toward zero).
pub(crate) fn share(amount: Amount, part: Amount, whole: Amount) -> Amount {
    if whole.0 == 0 {
        return Amount::ZERO;
    }
    Amount(mul_div(amount.0, part.0, whole.0))
}

/// A subscription fee's obligation (`subscription:<fee>`, or `subscription` for a contract
/// whose fees the schedule was not told).
pub(crate) fn is_subscription(k: &ScheduleKey) -> bool {
    k.obligation == "subscription" || k.obligation.starts_with("subscription:")
}

/// What the schedule reads of a contract's terms: its credit grants and its subscription fees.
pub struct Terms<'a> {
    pub customer: String,
    pub contract: String,
    pub currency: String,
    /// When the contract starts and ends: the share of a period its fees bill.
    pub span: (EventTime, Option<EventTime>),
    /// In burn order, as the catalog holds them.
    pub grants: &'a [CreditGrant],
    /// Its subscription fees, by name: each is an obligation of its own, and the invoice's
    /// subscription line is allocated across them by the standalone selling price of what each
    /// bills in the period (prorated alike).
    pub fees: &'a [Fee],
    /// Its fees billed in advance per term: obligations too, allocated by the standalone selling
    /// price of what each bills in the period (its terms starting there), and recognised over
    /// their terms.
    pub term_fees: &'a [TermFee],
}

/// Whole days from `from` to `to` (none if `to` is not after it).
fn days(from: EventTime, to: EventTime) -> i128 {
    ((to.0 - from.0).max(0) / 86_400_000) as i128
}

/// What `x`, earned by day over `[from, to)`, has earned by `at`: the whole days elapsed against
/// the whole days of the service, and all of it once `at` reaches `to`.
pub(crate) fn by_day(x: Amount, (from, to): (EventTime, EventTime), at: EventTime) -> Amount {
    if at >= to {
        return x;
    }
    Amount(mul_div(x.0, days(from, at), days(from, to).max(1)))
}
