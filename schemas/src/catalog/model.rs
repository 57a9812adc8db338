//! The catalog in memory: customers, contracts (with their terms and entitlements), SKUs, rate
//! cards with their effective-dated versions and prices, and the lookups from ids to dense
//! indices.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::ids::{ContractIdx, CustomerIdx, PriceIdx, RateCardIdx, RegionIdx, SkuIdx, TaxIdx};

use crate::hashing::FxHashMap;
use crate::money::{Amount, UnitPrice};
use crate::pricing::invoice::{active_share, prorated};
use crate::pricing::PriceModel;
use crate::time::EventTime;

#[derive(Clone, Debug)]
pub struct Customer {
    pub id: String,
    pub name: String,
    /// The tax that applies to the customer's invoices (its jurisdiction), if any.
    pub tax: Option<TaxIdx>,
    /// The customer's segment (cohort) for forecasts; empty when the catalog names none.
    pub segment: String,
}

/// A tax rate of one jurisdiction (`[[tax]]`).
#[derive(Clone, Debug)]
pub struct Tax {
    pub id: String,
    pub name: String,
    /// A fraction: `0.19` is 19%.
    pub rate: UnitPrice,
}

/// A discount of a contract (`[[contract.discount]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discount {
    pub name: String,
    /// Only this SKU's usage; `None`: the whole invoice.
    pub sku: Option<SkuIdx>,
    pub off: DiscountOff,
    /// The invoice periods it applies to: those starting in `from`..`until`.
    pub from: Option<EventTime>,
    pub until: Option<EventTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscountOff {
    /// A fraction of the amount it applies to: `0.1` is 10% off.
    Percent(UnitPrice),
    /// A fixed amount per invoice period, never more than the amount it applies to.
    Fixed(Amount),
}

impl Discount {
    pub fn applies_in(&self, period_start: EventTime) -> bool {
        self.from.is_none_or(|f| period_start >= f) && self.until.is_none_or(|u| period_start < u)
    }
}

/// A credit grant of a contract (`[[contract.credit]]`): burnt down by the contract's invoices,
/// by priority, then earliest expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditGrant {
    pub name: String,
    pub amount: Amount,
    /// Lower burns first.
    pub priority: u32,
    /// Usable for invoice periods starting at or after this time ...
    pub granted: EventTime,
    /// ... and before this one.
    pub expires: Option<EventTime>,
    /// Given free (a concession that lowers the price of what it pays for), not prepaid by the
    /// customer (a contract liability). Pricing burns both alike; the revenue schedule does not.
    pub promotional: bool,
    /// A free grant the customer got for signing the contract, which it would not get
    /// otherwise: a material right (ASC 606-10-55-42), with the share of it expected to be
    /// redeemed (0 to 1). The revenue schedule allocates it a share of the contract's fees by
    /// its standalone selling price (amount × that share), deferred until it is redeemed or
    /// expires. Such a grant is also `promotional`.
    pub material_right: Option<UnitPrice>,
}

impl CreditGrant {
    pub fn usable_in(&self, period_start: EventTime) -> bool {
        period_start >= self.granted && self.expires.is_none_or(|e| period_start < e)
    }
}

/// A fee billed in advance for a term of whole months (`[[contract.fee]]` with `term_months`,
/// an annual subscription): the whole amount on the invoice of the period each term starts in.
/// The first term starts with the contract (or at the fee's own `starts`), each next one
/// `months` later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermFee {
    pub name: String,
    pub amount: Amount,
    /// Its standalone selling price per term (the revenue schedule allocates by it); its amount
    /// unless the catalog says otherwise.
    pub ssp: Amount,
    pub months: u32,
    /// When the first term starts.
    pub anchor: EventTime,
    /// The contract's end: no term starts at or after it, and a term it cuts short is billed
    /// its share (by time) of the amount.
    pub until: Option<EventTime>,
    /// Later prices, by when they apply, in order (see [`TermFee::terms`]).
    pub changes: Vec<FeeChange>,
    /// Its changes are price steps agreed when the contract was signed (a ramp deal), not later
    /// modifications: the revenue schedule spreads what it bills over the contract's whole term
    /// (see [`Fee::ramp`]).
    pub ramp: bool,
}

/// A fee's new price from `from` on (`[[contract.fee.change]]`): an upgrade or a downgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeeChange {
    pub from: EventTime,
    pub amount: Amount,
    pub ssp: Amount,
}

/// What `price` (amount, standalone selling price) bills from `from` on in the period (or
/// term) `[start, end)`, serving until `until`: its share by time of the part `runs` covers.
/// An upgrade if it starts after the period does.
fn part(
    from: EventTime,
    (amount, ssp): (Amount, Amount),
    runs: (EventTime, Option<EventTime>),
    (start, end): (EventTime, EventTime),
    until: EventTime,
) -> Term {
    let share = active_share(runs.0, runs.1, start, end);
    Term {
        start: from,
        end: until,
        amount: prorated(amount, share),
        ssp: prorated(ssp, share),
        upgrade: from > start,
    }
}

/// What a fee priced `base`, then `changes`, bills for `[start, end)` (a period or a term), as
/// `part(from, price)` prices a part: the price in effect at `start`, then each upgrade inside
/// (the increase, from the upgrade on). A downgrade inside adds nothing: it applies from the
/// next period or term.
fn upgraded_parts(
    base: (Amount, Amount),
    changes: &[FeeChange],
    (start, end): (EventTime, EventTime),
    part: impl Fn(EventTime, (Amount, Amount)) -> Term,
) -> Vec<Term> {
    let (mut amount, mut ssp) = price_at(base, changes, start);
    let mut out = vec![part(start, (amount, ssp))];
    for c in changes.iter().filter(|c| c.from > start && c.from < end) {
        if c.amount > amount {
            let increase = (c.amount - amount, (c.ssp - ssp).max(Amount::ZERO));
            out.push(part(c.from, increase));
            (amount, ssp) = (c.amount, c.ssp);
        }
    }
    out
}

/// A fee's (amount, standalone selling price) at `at`: the last of `changes` from at or before
/// it, else `base`.
fn price_at(base: (Amount, Amount), changes: &[FeeChange], at: EventTime) -> (Amount, Amount) {
    changes
        .iter()
        .rev()
        .find(|c| c.from <= at)
        .map_or(base, |c| (c.amount, c.ssp))
}

/// One term of a [`TermFee`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub start: EventTime,
    /// Where the service ends: the term's end, or the contract's if that comes first.
    pub end: EventTime,
    /// What the term bills: the fee, times the share of the term the contract runs (exact to
    /// 18 digits, half up).
    pub amount: Amount,
    /// The fee's standalone selling price, prorated like `amount`.
    pub ssp: Amount,
    /// An upgrade inside a term: it bills the price's increase from `start` to the term's end.
    pub upgrade: bool,
}

impl TermFee {
    /// A fee of `amount` per term of `months` from `anchor`, sold at its standalone selling
    /// price, at one price, on a contract without an end.
    pub fn new(name: impl Into<String>, amount: Amount, months: u32, anchor: EventTime) -> Self {
        TermFee {
            name: name.into(),
            amount,
            ssp: amount,
            months,
            anchor,
            until: None,
            changes: Vec::new(),
            ramp: false,
        }
    }

    /// What the `k`-th term (0: the one the contract starts with) bills, if it starts before
    /// the contract ends: first the term itself, at the price in effect when it starts; then
    /// one part per upgrade inside it, from the upgrade to the term's end, billing the price's
    /// increase for that share of the term (prorated by time, like a term the contract cuts
    /// short). A downgrade inside a term bills nothing back: it applies from the next term.
    fn terms(&self, k: u32) -> Option<Vec<Term>> {
        let start = self.anchor.plus_months(self.months.checked_mul(k)?);
        let full_end = self.anchor.plus_months(self.months.checked_mul(k + 1)?);
        if self.until.is_some_and(|u| start >= u) {
            return None;
        }
        let end = self.until.map_or(full_end, |u| u.min(full_end));
        // Prorated like a fee of a period the contract runs part of.
        let part = |from, price| part(from, price, (from, self.until), (start, full_end), end);
        let base = (self.amount, self.ssp);
        Some(upgraded_parts(base, &self.changes, (start, end), part))
    }

    /// The terms an invoice period `[from, to)` bills: those starting in it; and for the first
    /// period a contract is invoiced for (`first`), also the term running at its start, billed
    /// late in that period (the periods before it were not invoiced).
    pub fn billed_in(&self, from: EventTime, to: EventTime, first: bool) -> Vec<Term> {
        let mut out = Vec::new();
        // Every term before `skip` ends a month or more before `from`.
        let (a, f) = (self.anchor.civil(), from.civil());
        let months_before = (f.year - a.year) * 12 + i64::from(f.month) - i64::from(a.month);
        let skip = (months_before / i64::from(self.months.max(1)) - 1).clamp(0, u32::MAX as i64);
        for k in skip as u32..(skip as u32).saturating_add(12_000) {
            let Some(terms) = self.terms(k) else { break };
            if terms[0].start >= to {
                break;
            }
            out.extend(
                terms
                    .into_iter()
                    .filter(|t| t.start < to && (t.start >= from || (first && t.end > from))),
            );
        }
        out
    }

    /// What the invoice period `[from, to)` bills of this fee (see [`TermFee::billed_in`]).
    pub fn due(&self, from: EventTime, to: EventTime, first: bool) -> Amount {
        self.billed_in(from, to, first)
            .iter()
            .map(|t| t.amount)
            .sum()
    }
}

/// A fee billed every invoice period (a subscription).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fee {
    pub name: String,
    /// What it bills per invoice period.
    pub amount: Amount,
    /// Its standalone selling price per invoice period: what it would sell for on its own
    /// (ASC 606-10-32-31). The revenue schedule allocates the subscription line across a
    /// contract's fees by it. Its amount unless the catalog says otherwise (a fee included in a
    /// bundle bills 0 but has a price of its own).
    pub ssp: Amount,
    /// Later prices, by when they apply, in order (see [`Fee::billed`]).
    pub changes: Vec<FeeChange>,
    /// Its changes are price steps agreed when the contract was signed (a ramp deal: 100 the
    /// first year, 120 the second), not later modifications. Billing is the same either way;
    /// the revenue schedule allocates what a ramp bills over the contract's whole term by its
    /// standalone selling price, which a step keeps unless it says otherwise.
    pub ramp: bool,
}

impl Fee {
    /// A fee sold at its standalone selling price, at one price.
    pub fn new(name: impl Into<String>, amount: Amount) -> Self {
        Fee {
            name: name.into(),
            amount,
            ssp: amount,
            changes: Vec::new(),
            ramp: false,
        }
    }

    /// What it bills for the invoice period `[start, end)` of a contract running `span`, and
    /// its standalone selling price for that: the price in effect when the period starts, for
    /// the part of the period the contract runs; and for each upgrade inside the period, the
    /// increase for the part from the upgrade on (both prorated by time, exact to 18 digits,
    /// half up). A downgrade inside a period bills nothing back: it applies from the next one.
    pub fn billed(
        &self,
        period: (EventTime, EventTime),
        span: (EventTime, Option<EventTime>),
    ) -> (Amount, Amount) {
        self.parts(period, span)
            .iter()
            .fold((Amount::ZERO, Amount::ZERO), |(a, s), p| {
                (a + p.amount, s + p.ssp)
            })
    }

    /// The parts of what it bills in the invoice period `[start, end)` ([`Fee::billed`]): the
    /// period at its starting price, then one per upgrade inside it (`upgrade`, from its
    /// `start`).
    pub fn parts(
        &self,
        (start, end): (EventTime, EventTime),
        span: (EventTime, Option<EventTime>),
    ) -> Vec<Term> {
        let part = |from, price| part(from, price, (span.0.max(from), span.1), (start, end), end);
        upgraded_parts((self.amount, self.ssp), &self.changes, (start, end), part)
    }
}

/// What a contract adds to each invoice beyond its usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContractTerms {
    /// Flat recurring fees per invoice period (subscriptions), by name.
    pub fees: Vec<Fee>,
    /// Fees billed in advance per term of months (annual subscriptions).
    pub term_fees: Vec<TermFee>,
    pub discounts: Vec<Discount>,
    /// Minimum spend per invoice period: a commitment true-up line makes up the difference.
    pub minimum_spend: Option<Amount>,
    /// Maximum spend per invoice period: a cap line takes off the excess.
    pub maximum_spend: Option<Amount>,
    /// Planned usage spend per invoice period (a service budget): `budget_burn` signals when
    /// usage runs ahead of it. Bills nothing.
    pub budget: Option<Amount>,
    /// Prepaid credits, in burn order (priority, then earliest expiry, then as written).
    pub credits: Vec<CreditGrant>,
}

#[derive(Clone, Debug)]
pub struct Sku {
    pub id: String,
    pub unit: String,
    pub description: String,
    /// How a period's events make its billable quantity.
    pub aggregation: Aggregation,
    /// For [`Aggregation::UniqueCount`]: the `metadata.attributes` key whose distinct values
    /// are counted.
    pub unique_by: Option<String>,
}

/// How a meter's events add up to the quantity that is priced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregation {
    /// The sum of the events' quantities (net of corrections).
    #[default]
    Sum,
    /// The number of events (a void takes its original back out; an amend counts nothing).
    Count,
    /// The largest reading of the period (peak seats, peak concurrency).
    Max,
    /// The number of distinct values of one attribute (`unique_by`) over the period's events
    /// (monthly active users).
    UniqueCount,
    /// The reading with the latest event time (a gauge: storage held at the end of the period).
    Latest,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Max => "max",
            Aggregation::UniqueCount => "unique_count",
            Aggregation::Latest => "latest",
        }
    }

    /// Sum and count add up event by event; max, unique count and latest are functions of the
    /// period's whole set of readings (see `operators::meters`).
    pub fn is_additive(self) -> bool {
        matches!(self, Aggregation::Sum | Aggregation::Count)
    }
}

/// The identity of the value an event contributes to a unique-count meter: a 128-bit hash of
/// the JSON value of `attributes[key]` (as serde_json writes it, so `"u1"` and `"\u0075\u0031"`
/// are one value). `attributes` is the canonical JSON object of `metadata.attributes`.
pub fn distinct_value(attributes: Option<&str>, key: &str) -> Option<u128> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(attributes?).ok()?;
    let value = map.get(key)?;
    if value.is_null() {
        return None;
    }
    let text = serde_json::to_string(value).ok()?;
    Some(xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

#[derive(Clone, Debug)]
pub struct Contract {
    pub id: String,
    pub customer: CustomerIdx,
    pub rate_card: RateCardIdx,
    /// A pinned version (grandfathering); `None` follows the version effective at event time.
    pub pinned_version: Option<u32>,
    pub starts: EventTime,
    /// Exclusive end; `None` runs until further notice.
    pub ends: Option<EventTime>,
    pub terms: ContractTerms,
    /// Included quantities and limits per SKU (at most one per SKU).
    pub entitlements: Vec<crate::entitlement::Entitlement>,
    /// A rate card its usage is also priced by, side by side (shadow billing).
    pub shadow: Option<RateCardIdx>,
    /// The marketplace the customer bought this contract through, if any.
    pub marketplace: Option<MarketplaceAccount>,
    /// How the forecast carries the contract past `ends` (billing does not).
    pub renewal: Option<Renewal>,
}

/// A contract's renewal as the revenue forecast assumes it (`[contract.renewal]`): past `ends`
/// it runs on the same terms for `term_months` at a time, each renewal with `likelihood`.
/// Billing is not affected: events after `ends` are rejected until the catalog extends the
/// contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub term_months: u32,
    /// A fraction from 0 to 1: `0.9` is a 90% chance that each term renews.
    pub likelihood: UnitPrice,
}

/// A cloud marketplace meterflow writes metering requests for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MarketplaceKind {
    Aws,
    Azure,
    Gcp,
}

impl MarketplaceKind {
    pub const ALL: [MarketplaceKind; 3] = [Self::Aws, Self::Azure, Self::Gcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }

    pub fn parse(s: &str) -> Option<MarketplaceKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A marketplace listing (`[[marketplace]]`): a product on one marketplace and the dimensions
/// its SKUs are metered as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub id: String,
    pub kind: MarketplaceKind,
    /// AWS: the product code; GCP: the service name; empty for Azure (the plan is per contract).
    pub product: String,
    pub dimensions: Vec<Dimension>,
}

impl Listing {
    pub fn dimension(&self, sku: SkuIdx) -> Option<&Dimension> {
        self.dimensions.iter().find(|d| d.sku == sku)
    }
}

/// How one SKU is metered on a listing (`[[marketplace.dimension]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimension {
    pub sku: SkuIdx,
    /// AWS: the dimension API name; Azure: the dimension id; GCP: the metric name.
    pub name: String,
    /// SKU units per marketplace unit (`"1000"`: a quantity of 1 is 1000 tokens).
    pub unit_size: crate::money::Quantity,
    /// AWS only: the `metadata.attributes` keys whose values tag the usage, so each record's
    /// quantity is split into `UsageAllocations` by them (at most 5; none: no allocations).
    pub allocation_tags: Vec<String>,
}

/// A contract sold through a marketplace (`[contract.marketplace]`): the listing, and who the
/// customer is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketplaceAccount {
    /// Index into [`Catalog::marketplaces`].
    pub listing: usize,
    /// AWS: `CustomerIdentifier`; Azure: the SaaS subscription's `resourceId`; GCP: the
    /// `consumerId` (`project:<id>`). Empty for AWS when `aws_account_id` is used.
    pub customer: String,
    /// AWS: `CustomerAWSAccountId`, instead of `customer`.
    pub aws_account_id: Option<String>,
    /// Azure: the `planId` the customer bought.
    pub plan: Option<String>,
}

impl Contract {
    pub fn active_at(&self, t: EventTime) -> bool {
        t >= self.starts && self.ends.is_none_or(|end| t < end)
    }
}

#[derive(Clone, Debug)]
pub struct RateCard {
    pub id: String,
    pub currency: String,
    /// Sorted by `effective_from`; immutable once published.
    pub versions: Vec<RateCardVersion>,
}

#[derive(Clone, Debug)]
pub struct RateCardVersion {
    pub version: u32,
    pub effective_from: EventTime,
    /// Prices of this version, by SKU: region-specific entries first, then the default (if any).
    pub prices: FxHashMap<SkuIdx, Vec<PriceIdx>>,
}

/// One priced SKU within one rate-card version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Price {
    pub rate_card: RateCardIdx,
    pub version: u32,
    pub effective_from: EventTime,
    pub sku: SkuIdx,
    /// `None` prices every region not priced explicitly.
    pub region: Option<RegionIdx>,
    pub currency: Arc<str>,
    pub model: PriceModel,
    /// What a unit costs to serve (cost of goods), when the rate card says: margin anomalies.
    pub unit_cost: Option<UnitPrice>,
}

/// Why no price applies to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateMiss {
    /// No version of the rate card is effective at the event time (or the pinned one is missing).
    NoVersion,
    /// The version has no price for the SKU (in this region).
    SkuNotPriced,
}

/// The whole catalog, read-only once loaded; shared by all workers.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub customers: Vec<Customer>,
    pub contracts: Vec<Contract>,
    pub skus: Vec<Sku>,
    pub rate_cards: Vec<RateCard>,
    pub prices: Vec<Price>,
    pub regions: Vec<String>,
    pub taxes: Vec<Tax>,
    pub marketplaces: Vec<Listing>,
    customer_ix: FxHashMap<String, CustomerIdx>,
    contract_ix: FxHashMap<String, ContractIdx>,
    sku_ix: FxHashMap<String, SkuIdx>,
    region_ix: FxHashMap<String, RegionIdx>,
}

impl Catalog {
    pub fn customer(&self, id: &str) -> Option<CustomerIdx> {
        self.customer_ix.get(id).copied()
    }
    pub fn contract(&self, id: &str) -> Option<ContractIdx> {
        self.contract_ix.get(id).copied()
    }
    pub fn sku(&self, id: &str) -> Option<SkuIdx> {
        self.sku_ix.get(id).copied()
    }
    pub fn region(&self, name: &str) -> Option<RegionIdx> {
        self.region_ix.get(name).copied()
    }
    pub fn region_name(&self, r: Option<RegionIdx>) -> &str {
        r.map_or("*", |r| &self.regions[r.ix()])
    }
    /// A SKU's id, or `""` for [`SkuIdx::INVOICE`].
    pub fn sku_id(&self, s: SkuIdx) -> &str {
        if s == SkuIdx::INVOICE {
            ""
        } else {
            &self.skus[s.ix()].id
        }
    }
    /// The SKU named `id`; `""` is [`SkuIdx::INVOICE`].
    pub fn sku_or_invoice(&self, id: &str) -> Option<SkuIdx> {
        if id.is_empty() {
            Some(SkuIdx::INVOICE)
        } else {
            self.sku(id)
        }
    }
    /// The currency a contract bills in (its rate card's).
    pub fn currency_of(&self, c: ContractIdx) -> &str {
        &self.rate_cards[self.contracts[c.ix()].rate_card.ix()].currency
    }
    pub fn price(&self, p: PriceIdx) -> &Price {
        &self.prices[p.ix()]
    }

    /// The rate-card version that prices `contract` at `t`: the pinned one, or the latest whose
    /// `effective_from` is not after `t`.
    pub fn version_at(&self, contract: &Contract, t: EventTime) -> Option<&RateCardVersion> {
        let card = &self.rate_cards[contract.rate_card.ix()];
        match contract.pinned_version {
            Some(v) => card.versions.iter().find(|x| x.version == v),
            None => card.versions.iter().rev().find(|x| x.effective_from <= t),
        }
    }

    /// The versions of `contract`'s rate card that price some instant of `from..until`, in
    /// order: one for a pinned contract, more where versions take effect inside the range.
    pub fn versions_over(
        &self,
        contract: &Contract,
        from: EventTime,
        until: EventTime,
    ) -> Vec<u32> {
        let card = &self.rate_cards[contract.rate_card.ix()];
        let changes = card
            .versions
            .iter()
            .map(|v| v.effective_from)
            .filter(|t| *t > from && *t < until);
        let mut out: Vec<u32> = std::iter::once(from)
            .chain(changes)
            .filter_map(|t| self.version_at(contract, t).map(|v| v.version))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The price of `sku` in `region` under `contract`'s shadow rate card: its latest version
    /// (a shadow card is a proposal as it stands, whatever its effective date).
    pub fn shadow_price_for(
        &self,
        contract: &Contract,
        sku: SkuIdx,
        region: Option<RegionIdx>,
    ) -> Option<PriceIdx> {
        let card = &self.rate_cards[contract.shadow?.ix()];
        let version = card.versions.last()?;
        version.prices.get(&sku)?.iter().copied().find(|p| {
            let r = self.prices[p.ix()].region;
            r.is_none() || r == region
        })
    }

    /// The price for `sku` in `region` under `contract` at `t`.
    pub fn price_for(
        &self,
        contract: &Contract,
        sku: SkuIdx,
        region: Option<RegionIdx>,
        t: EventTime,
    ) -> Result<PriceIdx, RateMiss> {
        let version = self.version_at(contract, t).ok_or(RateMiss::NoVersion)?;
        let candidates = version.prices.get(&sku).ok_or(RateMiss::SkuNotPriced)?;
        candidates
            .iter()
            .copied()
            .find(|p| {
                let r = self.prices[p.ix()].region;
                r.is_none() || r == region
            })
            .ok_or(RateMiss::SkuNotPriced)
    }

    pub(crate) fn index(&mut self) {
        self.customer_ix = self
            .customers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), CustomerIdx(i as u32)))
            .collect();
        self.contract_ix = self
            .contracts
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), ContractIdx(i as u32)))
            .collect();
        self.sku_ix = self
            .skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), SkuIdx(i as u32)))
            .collect();
        self.region_ix = self
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), RegionIdx(i as u32)))
            .collect();
    }
}
