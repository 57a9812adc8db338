//! A meter's buckets: the reported ones only, in bucket order, in ring buffers.
//!
//! Usage arrives almost in time order, so nearly every change is to the newest bucket or a new
//! one after it (checked first, one load), and forgetting takes the oldest from the front. A
//! lookup elsewhere is a binary search over contiguous memory. This replaced a `BTreeMap`, whose
//! descent through nodes scattered over the heap, for every usage update of every meter, was
//! 8% of `run -w 1` (B1, session 34).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::money::Quantity;

/// Usage of one meter in one bucket.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Bucket {
    pub events: i64,
    pub quantity: Quantity,
}

impl Bucket {
    pub(super) fn reported(&self) -> bool {
        self.events != 0 || self.quantity != Quantity::ZERO
    }
}

impl std::ops::Add for Bucket {
    type Output = Bucket;
    fn add(self, other: Bucket) -> Bucket {
        Bucket {
            events: self.events + other.events,
            quantity: self.quantity + other.quantity,
        }
    }
}

/// Bucket numbers and their usage side by side (a pair would be padded to 48 bytes by the
/// usage's 16-byte alignment; apart they take 40).
#[derive(Default)]
pub(super) struct Series {
    keys: VecDeque<i64>,
    usage: VecDeque<Bucket>,
}

impl Series {
    /// The position of bucket `b`, or where it would go.
    fn find(&self, b: i64) -> Result<usize, usize> {
        match self.keys.back() {
            Some(&last) if b > last => Err(self.keys.len()),
            Some(&last) if b == last => Ok(self.keys.len() - 1),
            _ => self.keys.binary_search(&b),
        }
    }

    pub(super) fn get(&self, b: i64) -> Option<Bucket> {
        self.find(b).ok().map(|i| self.usage[i])
    }

    /// Adds `usage` to bucket `b`, keeping only reported buckets; returns the bucket before and
    /// after.
    pub(super) fn add(&mut self, b: i64, usage: Bucket) -> (Bucket, Bucket) {
        match self.find(b) {
            Err(at) => {
                if usage.reported() {
                    self.keys.insert(at, b);
                    self.usage.insert(at, usage);
                }
                (Bucket::default(), usage)
            }
            Ok(at) => {
                let before = self.usage[at];
                let after = before + usage;
                if after.reported() {
                    self.usage[at] = after;
                } else {
                    self.keys.remove(at);
                    self.usage.remove(at);
                }
                (before, after)
            }
        }
    }

    /// Removes and returns the oldest bucket if it is before `b`.
    pub(super) fn pop_before(&mut self, b: i64) -> Option<Bucket> {
        match self.keys.front() {
            Some(&first) if first < b => {
                self.keys.pop_front();
                self.usage.pop_front()
            }
            _ => None,
        }
    }

    pub(super) fn first(&self) -> Option<i64> {
        self.keys.front().copied()
    }

    pub(super) fn last(&self) -> Option<i64> {
        self.keys.back().copied()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The first bucket held in `from..=to`.
    pub(super) fn first_within(&self, from: i64, to: i64) -> Option<i64> {
        let at = self.keys.partition_point(|&k| k < from);
        self.keys.get(at).copied().filter(|&b| b <= to)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, Bucket)> + '_ {
        self.keys.iter().copied().zip(self.usage.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn usage(events: i64, q: i128) -> Bucket {
        Bucket {
            events,
            quantity: Quantity(q),
        }
    }

    #[test]
    fn behaves_as_a_map_of_reported_buckets() {
        // A pseudo-random walk of adds (mostly at the end, some earlier, some cancelling),
        // lookups and forgets, against a BTreeMap doing the same.
        let (mut series, mut map) = (Series::default(), BTreeMap::<i64, Bucket>::new());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut newest = 0i64;
        for step in 0..20_000 {
            let r = next();
            let b = match r % 10 {
                0..=5 => newest,
                6 | 7 => newest + 1 + (r >> 8) as i64 % 3,
                _ => newest - (r >> 8) as i64 % 50,
            };
            newest = newest.max(b);
            let sign = if r % 7 == 0 { -1 } else { 1 };
            let u = usage(sign, sign as i128 * ((r >> 16) % 5) as i128);
            let before = map.get(&b).copied().unwrap_or_default();
            let after = usage(before.events + u.events, before.quantity.0 + u.quantity.0);
            if after.reported() {
                map.insert(b, after);
            } else {
                map.remove(&b);
            }
            assert_eq!(series.add(b, u), (before, after), "step {step}");
            if step % 97 == 0 {
                let forget = newest - 60;
                let mut popped = Vec::new();
                while let Some(u) = series.pop_before(forget) {
                    popped.push(u);
                }
                let kept = map.split_off(&forget);
                assert_eq!(popped, map.values().copied().collect::<Vec<_>>());
                map = kept;
            }
            let probe = newest - (r >> 24) as i64 % 70;
            assert_eq!(series.get(probe), map.get(&probe).copied());
            assert_eq!(
                series.first_within(probe - 5, probe),
                map.range(probe - 5..=probe).next().map(|(&k, _)| k)
            );
        }
        assert_eq!(series.first(), map.keys().next().copied());
        assert_eq!(series.last(), map.keys().next_back().copied());
        assert_eq!(
            series.iter().collect::<Vec<_>>(),
            map.into_iter().collect::<Vec<_>>()
        );
    }
}
