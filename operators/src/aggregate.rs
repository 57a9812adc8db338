//! Pre-aggregation: folds each pricing round's billable usage into one update per
//! (price, line, invoice period) before it enters differential.
//!
//! A pricing round is `epochs_per_round` consecutive epochs; invoice lines are re-priced once per
//! round instead of once per epoch, which trades a little latency for much less churn.
//!
//! (data, time, diff): for the round ending at epoch `r`, emits at `r` one update
//! `((price, (line, invoice_period)), r, UsageSum)` per distinct key seen in the round on this
//! worker, once the input frontier passes `r`. State: one map per unfinished round (bounded by the
//! source's flow control). The diff type
//! [`UsageSum`] carries event count and quantity, so differential accumulates usage directly.

use std::collections::{BTreeMap, HashMap};

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use meterflow_schemas::catalog::PriceIdx;
use meterflow_schemas::hashing::FxBuild;
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_schemas::rows::{LineKey, UsageDelta};
use meterflow_schemas::time::Period;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::Epoch;

/// Accumulated usage: the diff type of the usage collection.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UsageSum {
    pub events: i64,
    pub quantity: Quantity,
    /// Per-transaction fee limits of percentage prices, summed (zero for everything else).
    pub fee_adjustment: Amount,
}

impl UsageSum {
    /// What one accepted event adds.
    pub fn of(d: &UsageDelta) -> UsageSum {
        UsageSum {
            events: d.events,
            quantity: d.quantity,
            fee_adjustment: d.fee_adjustment,
        }
    }
}

impl IsZero for UsageSum {
    fn is_zero(&self) -> bool {
        self.events == 0 && self.quantity == Quantity::ZERO && self.fee_adjustment == Amount::ZERO
    }
}

impl Semigroup for UsageSum {
    fn plus_equals(&mut self, rhs: &Self) {
        self.events += rhs.events;
        self.quantity += rhs.quantity;
        self.fee_adjustment += rhs.fee_adjustment;
    }
}

impl Monoid for UsageSum {
    fn zero() -> Self {
        UsageSum::default()
    }
}

impl Abelian for UsageSum {
    fn negate(&mut self) {
        self.events = -self.events;
        self.quantity = -self.quantity;
        self.fee_adjustment = Amount(-self.fee_adjustment.0);
    }
}

impl Multiply<isize> for UsageSum {
    type Output = UsageSum;
    fn multiply(self, rhs: &isize) -> UsageSum {
        UsageSum {
            events: self.events * *rhs as i64,
            quantity: Quantity(self.quantity.0 * *rhs as i128),
            fee_adjustment: Amount(self.fee_adjustment.0 * *rhs as i128),
        }
    }
}

/// Usage keyed for the rate join.
pub type UsageRecord = (PriceIdx, (LineKey, Period));

/// The last epoch of the pricing round holding `epoch`, for rounds of `epochs_per_round`.
pub fn round_end(epoch: Epoch, epochs_per_round: u64) -> Epoch {
    let k = epochs_per_round.max(1);
    (epoch / k) * k + (k - 1)
}

/// `seed` is usage restored from the sinks by a resumed run; it enters with the first round,
/// starting at `first_epoch`.
pub fn pre_aggregate<'s>(
    usage: StreamVec<'s, Epoch, UsageDelta>,
    epochs_per_round: u64,
    first_epoch: Epoch,
    seed: Vec<(UsageRecord, UsageSum)>,
) -> VecCollection<'s, Epoch, UsageRecord, UsageSum> {
    round_sums(
        usage,
        "PreAggregate",
        epochs_per_round,
        (first_epoch, seed),
        |d| (d.price, (d.line, d.invoice_period)),
    )
    .as_collection()
}

/// One pricing round's usage on this worker, per key.
type Sums<K> = HashMap<K, UsageSum, FxBuild>;

/// Each pricing round's usage on this worker, summed per `key`: for the round ending at `r`,
/// one `(key, r, sum)` per key with a non-zero sum, once the input frontier passes `r`.
/// `seed` (first epoch, sums, summed per key) enters with the round holding that epoch.
pub fn round_sums<'s, K>(
    usage: StreamVec<'s, Epoch, UsageDelta>,
    name: &str,
    epochs_per_round: u64,
    seed: (Epoch, Vec<(K, UsageSum)>),
    key: impl Fn(&UsageDelta) -> K + 'static,
) -> StreamVec<'s, Epoch, (K, Epoch, UsageSum)>
where
    K: std::hash::Hash + Eq + Clone + 'static,
{
    let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Sums<K>)> = BTreeMap::new();
    // Emptied tables of earlier rounds, kept with their capacity: a round's table then neither
    // grows nor faults in fresh pages (see RESULTS.md, session 22).
    let mut spare: Vec<Sums<K>> = Vec::new();
    let (first_epoch, seed) = seed;
    usage.unary_frontier(Pipeline, name, move |cap, _info| {
        if !seed.is_empty() {
            let round = round_end(first_epoch, epochs_per_round);
            // Seeds of one key add up (a restored line and re-rated events may share it).
            let mut sums = Sums::<K>::default();
            for (k, s) in seed {
                sums.entry(k).or_default().plus_equals(&s);
            }
            pending.insert(round, (cap.delayed(&round), sums));
        }
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let round = round_end(epoch, epochs_per_round);
                let (_, sums) = pending
                    .entry(round)
                    .or_insert_with(|| (cap.delayed(&round, 0), spare.pop().unwrap_or_default()));
                for d in data.flat_map(|d| d.drain(..)) {
                    sums.entry(key(&d))
                        .or_default()
                        .plus_equals(&UsageSum::of(&d));
                }
            });
            while let Some(entry) = pending.first_entry() {
                if frontier.frontier().less_equal(entry.key()) {
                    break;
                }
                let round = *entry.key();
                let (cap, mut sums) = entry.remove();
                let mut session = output.session(&cap);
                for (k, sum) in sums.drain() {
                    if !sum.is_zero() {
                        session.give((k, round, sum));
                    }
                }
                if spare.len() < 4 {
                    spare.push(sums);
                }
            }
        }
    })
}
