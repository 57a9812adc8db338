//! What meterflow writes: accepted usage, duplicates, rated usage, invoice lines and the
//! accounting counts. Derived rows (rated usage, invoice lines) are signed: `sign = +1` adds a row,
//! `sign = -1` retracts an earlier one, so `sum(x * sign)` is always the current truth.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{ContractIdx, CustomerIdx, PriceIdx, RegionIdx, SkuIdx};
use crate::event::UsageEvent;
use crate::hashing::EventKey;
use crate::lineage::Lineage;
use crate::money::{Amount, Quantity};
use crate::rejection::Reason;
use crate::time::{EventTime, Period};

/// How an accepted event arrived relative to the event-time watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Arrival {
    /// At or ahead of the watermark.
    OnTime,
    /// Behind the watermark but its period was still open (inside the tolerance): counted in its
    /// own period.
    OutOfOrder,
    /// Its period had closed: billed as an adjustment in the current open period.
    Late,
}

impl Arrival {
    pub fn as_str(self) -> &'static str {
        match self {
            Arrival::OnTime => "on_time",
            Arrival::OutOfOrder => "out_of_order",
            Arrival::Late => "late",
        }
    }
}

/// A deduplicated, accepted event with the periods it counts in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AcceptedEvent {
    pub event: UsageEvent,
    /// The period the usage happened in.
    pub service_period: Period,
    /// The period whose invoice carries it (later than `service_period` for late events).
    pub invoice_period: Period,
    pub arrival: Arrival,
}

/// A record recognised as a repeat of an accepted event (same id, same payload).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DuplicateRow {
    pub event_id: Box<str>,
    pub key: EventKey,
    pub time: EventTime,
    pub lineage: Lineage,
}

/// The compact slice of an accepted billable event that pricing needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageDelta {
    pub line: LineKey,
    pub invoice_period: Period,
    pub price: PriceIdx,
    /// How the event changes the line's event count: +1, or -1 for a void (it cancels its
    /// original, so a line whose events are all voided disappears), or 0 for an amend.
    pub events: i64,
    pub quantity: Quantity,
    /// When the usage happened (usage buckets, anomalies, `latest` meters).
    pub time: EventTime,
    /// For a unique-count meter: the identity of the value counted (see
    /// [`crate::catalog::distinct_value`]); 0 for other meters.
    pub distinct: u128,
    /// For a percentage price with per-transaction limits: what they change in this
    /// transaction's fee (see [`crate::pricing::percentage::limit_adjustment`]); zero otherwise.
    pub fee_adjustment: Amount,
}

/// What an invoice line is about: one SKU of one contract in one service period (and price
/// region, since regions may carry their own tiers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineKey {
    pub customer: CustomerIdx,
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    pub region: Option<RegionIdx>,
    pub service_period: Period,
}

/// What an invoice line is. Kept apart so that revenue recognition can separate subscription
/// from usage, and finance can see every discount, true-up, cap and tax on its own line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LineKind {
    /// Usage billed in its own period.
    Usage,
    /// Late usage of a period that had closed, billed in the open one.
    Adjustment,
    /// Flat recurring fees of the contract.
    Subscription,
    /// Discounts (negative): per SKU or for the whole invoice.
    Discount,
    /// The commitment true-up: what brings the period up to the minimum spend.
    Commitment,
    /// The spend cap (negative): what takes the period down to the maximum spend.
    Cap,
    /// Tax on the period's net amount.
    Tax,
    /// Prepaid credit used (negative).
    Credit,
}

impl LineKind {
    pub const ALL: [LineKind; 8] = [
        LineKind::Usage,
        LineKind::Adjustment,
        LineKind::Subscription,
        LineKind::Discount,
        LineKind::Commitment,
        LineKind::Cap,
        LineKind::Tax,
        LineKind::Credit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::Adjustment => "adjustment",
            LineKind::Subscription => "subscription",
            LineKind::Discount => "discount",
            LineKind::Commitment => "commitment",
            LineKind::Cap => "cap",
            LineKind::Tax => "tax",
            LineKind::Credit => "credit",
        }
    }

    pub fn parse(text: &str) -> Option<LineKind> {
        LineKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Lines priced from usage (the rest are derived per invoice from them).
    pub fn is_usage(self) -> bool {
        matches!(self, LineKind::Usage | LineKind::Adjustment)
    }
}

/// A row of a signed table, by its customer. Every worker writes the signed rows of the customers
/// it owns ([`writer_of`]): all versions of a row, and every alert about one of its keys, meet on
/// one worker, which holds them (their versions, the alerts open) without asking the others.
pub trait ByCustomer {
    fn customer(&self) -> CustomerIdx;
}

/// Which of `peers` workers writes the signed rows of `customer`: the exchange that routes the
/// rows (`hash % peers`) and a resumed run handing each worker the rows it held use this one
/// function, so the rows a restart restores are where the re-derived rows arrive.
pub fn writer_of(customer: CustomerIdx, peers: usize) -> usize {
    (customer_hash(customer) % peers.max(1) as u64) as usize
}

/// The hash [`writer_of`] takes modulo the workers (the top half of a multiplicative hash, so
/// consecutive customers spread over any number of workers).
pub fn customer_hash(customer: CustomerIdx) -> u64 {
    (u64::from(customer.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32
}

macro_rules! by_customer {
    ($($row:ty => |$r:ident| $e:expr),* $(,)?) => {$(
        impl ByCustomer for $row {
            fn customer(&self) -> CustomerIdx {
                let $r = self;
                $e
            }
        }
    )*};
}

by_customer!(
    InvoiceLine => |r| r.key.customer,
    RatedRow => |r| r.key.customer,
    LineUsage => |r| r.key.customer,
    EntitlementSignal => |r| r.customer,
    crate::anomaly::BucketRow => |r| r.customer,
    crate::anomaly::Anomaly => |r| r.customer,
);

/// One invoice line (signed on output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub key: LineKey,
    pub invoice_period: Period,
    pub kind: LineKind,
    pub currency: Arc<str>,
    pub events: i64,
    pub quantity: Quantity,
    /// Exact amount (18 fractional digits).
    pub amount_exact: Amount,
    /// Rounded once, to the currency's minor unit.
    pub amount: Amount,
}

/// An entitlement signal of one contract, SKU and service period (signed on output: `+1` when
/// usage crosses, `-1` if a correction brings it back below).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntitlementSignal {
    pub customer: CustomerIdx,
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    pub period: Period,
    pub kind: crate::entitlement::SignalKind,
    /// The threshold's percentage of the allowance (0 for limits).
    pub percent: u32,
    /// The quantity at which the signal fires.
    pub at: Quantity,
    /// The period's allowance (included plus rollover).
    pub allowance: Quantity,
}

impl EntitlementSignal {
    /// The row of `signal`, found for `key` (customer, contract, SKU) in the service period
    /// starting at `start`.
    pub fn of(
        (customer, contract, sku): (CustomerIdx, ContractIdx, SkuIdx),
        start: EventTime,
        signal: &crate::entitlement::Signal,
    ) -> EntitlementSignal {
        EntitlementSignal {
            customer,
            contract,
            sku,
            period: Period(start),
            kind: signal.kind,
            percent: signal.percent,
            at: signal.at,
            allowance: signal.allowance,
        }
    }
}

/// One tier of one price contributing to an invoice line (signed on output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RatedRow {
    pub key: LineKey,
    pub invoice_period: Period,
    pub price: PriceIdx,
    pub tier: u32,
    pub quantity: Quantity,
    pub amount: Amount,
}

/// The usage behind an invoice line, per price (rate-card version and region): the pricing
/// input, kept so a restarted pipeline can rebuild it (signed on output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineUsage {
    pub key: LineKey,
    pub invoice_period: Period,
    pub price: PriceIdx,
    pub events: i64,
    pub quantity: Quantity,
    /// Per-transaction fee limits, summed (percentage prices with `min_fee` / `max_fee`).
    pub fee_adjustment: Amount,
}

/// The accounting of a run: `received == accepted + rejected + duplicates` always holds once all
/// input is processed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub received: u64,
    pub bytes: u64,
    pub accepted: u64,
    /// Accepted events from billable environments (the rest are counted, never priced).
    pub billable: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Rejections by [`Reason`], indexed like `Reason::ALL`.
    pub rejected_by_reason: Vec<u64>,
    pub out_of_order: u64,
    pub late: u64,
    pub corrections: u64,
    /// Gauge: idempotency keys held by the dedup tables (all workers).
    pub dedup_keys: i64,
    /// Gauge: bytes allocated by the dedup tables (all workers).
    pub dedup_bytes: i64,
}

impl Counts {
    pub fn reject(&mut self, reason: Reason) {
        if self.rejected_by_reason.is_empty() {
            self.rejected_by_reason = vec![0; Reason::ALL.len()];
        }
        self.rejected += 1;
        self.rejected_by_reason[reason as usize] += 1;
    }

    pub fn merge(&mut self, o: &Counts) {
        self.received += o.received;
        self.bytes += o.bytes;
        self.accepted += o.accepted;
        self.billable += o.billable;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        if self.rejected_by_reason.len() < o.rejected_by_reason.len() {
            self.rejected_by_reason
                .resize(o.rejected_by_reason.len(), 0);
        }
        for (a, b) in self
            .rejected_by_reason
            .iter_mut()
            .zip(&o.rejected_by_reason)
        {
            *a += b;
        }
        self.out_of_order += o.out_of_order;
        self.late += o.late;
        self.corrections += o.corrections;
        self.dedup_keys += o.dedup_keys;
        self.dedup_bytes += o.dedup_bytes;
    }

    /// The counters without the gauges (for a resumed run, whose dedup table reports afresh).
    pub fn without_gauges(mut self) -> Counts {
        self.dedup_keys = 0;
        self.dedup_bytes = 0;
        self
    }

    /// `received == accepted + rejected + duplicates`.
    pub fn balanced(&self) -> bool {
        self.received == self.accepted + self.rejected + self.duplicates
    }

    pub fn rejected_for(&self, reason: Reason) -> u64 {
        self.rejected_by_reason
            .get(reason as usize)
            .copied()
            .unwrap_or(0)
    }
}
