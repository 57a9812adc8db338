//! The dedup operator's state: a compact open-addressing table of the idempotency keys seen
//! within the dedup horizon.
//!
//! A slot is 16 bytes: 64 bits of the key's 128-bit hash (the tag, which also picks the slot), 32
//! bits of the payload fingerprint (retry vs conflicting reuse), and the event time in minutes with
//! one flag bit (voided). Two different events are only taken for duplicates if 96 bits agree
//! (tag and payload); a tag-only collision (about n²/2^65 for n keys in one worker) shows up as a
//! visible `conflicting_duplicate` rejection, never as silently dropped usage. Linear probing keeps the load at most 3/4; a resize sizes the table
//! (any size, not a power of two) so the survivors fill exactly half of it. The table therefore
//! costs 21–32 bytes per live key, growing or forgetting. Keys whose event time falls behind `watermark - horizon` are dropped
//! whenever the table would otherwise grow, so memory follows the keys inside the horizon, not the
//! length of the stream.

use meterflow_schemas::hashing::EventKey;
use meterflow_schemas::time::EventTime;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    /// High 64 bits of the key hash; 0 marks an empty slot.
    tag: u64,
    payload: u32,
    /// Event time in minutes since the epoch; the top bit marks a voided event.
    minute: u32,
}

const VOIDED: u32 = 1 << 31;
const MINUTE_MASK: u32 = VOIDED - 1;
const MIN_CAPACITY: usize = 1024;

/// What the table knew about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub payload: u32,
    pub voided: bool,
}

/// The outcome of [`DedupTable::insert_new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: inserted.
    New,
    /// Seen before with this payload.
    Duplicate,
    /// Seen before with a different payload.
    Conflict,
}

pub struct DedupTable {
    slots: Vec<Slot>,
    len: usize,
    /// Keys older than this (in minutes) may be dropped.
    forget_before: u32,
}

impl Default for DedupTable {
    fn default() -> Self {
        DedupTable {
            slots: vec![Slot::default(); MIN_CAPACITY],
            len: 0,
            forget_before: 0,
        }
    }
}

fn tag_of(key: EventKey) -> u64 {
    ((key.0 >> 64) as u64).max(1)
}

pub fn payload_of(fingerprint: u64) -> u32 {
    (fingerprint ^ (fingerprint >> 32)) as u32
}

impl DedupTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the table.
    pub fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// Allows keys with event times before `t` to be dropped at the next resize.
    pub fn forget_before(&mut self, t: EventTime) {
        self.forget_before = self.forget_before.max(t.minutes_u32());
    }

    fn find(&self, key: EventKey) -> Result<usize, usize> {
        let capacity = self.slots.len();
        let tag = tag_of(key);
        let mut i = home_of_tag(tag, capacity);
        loop {
            let s = &self.slots[i];
            if s.tag == tag {
                return Ok(i);
            }
            if s.tag == 0 {
                return Err(i);
            }
            i += 1;
            if i == capacity {
                i = 0;
            }
        }
    }

    /// Hints the CPU to load `key`'s home slot, ahead of a lookup.
    #[inline]
    pub fn prefetch(&self, key: EventKey) {
        #[cfg(target_arch = "x86_64")]
        {
            let home = home_of_tag(tag_of(key), self.slots.len());
            let ptr = self.slots.as_ptr().wrapping_add(home) as *const i8;
            // SAFETY: prefetching is a hint; it never faults, whatever the address.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    pub fn get(&self, key: EventKey) -> Option<Entry> {
        self.find(key).ok().map(|i| {
            let s = &self.slots[i];
            Entry {
                payload: s.payload,
                voided: s.minute & VOIDED != 0,
            }
        })
    }

    /// Records `key` unless already present; reports what was there.
    pub fn insert_new(&mut self, key: EventKey, fingerprint: u64, time: EventTime) -> Seen {
        let payload = payload_of(fingerprint);
        match self.find(key) {
            Ok(i) if self.slots[i].payload == payload => Seen::Duplicate,
            Ok(_) => Seen::Conflict,
            Err(mut i) => {
                if (self.len + 1) * 4 > self.slots.len() * 3 {
                    self.resize();
                    i = self.find(key).expect_err("key is absent");
                }
                self.slots[i] = Slot {
                    tag: tag_of(key),
                    payload,
                    minute: time.minutes_u32().min(MINUTE_MASK),
                };
                self.len += 1;
                Seen::New
            }
        }
    }

    /// Marks an existing key as voided; returns false if it is absent.
    pub fn mark_voided(&mut self, key: EventKey) -> bool {
        match self.find(key) {
            Ok(i) => {
                self.slots[i].minute |= VOIDED;
                true
            }
            Err(_) => false,
        }
    }

    /// Makes room: drops forgotten keys in place, and reallocates only when the survivors fill
    /// more than half of the table (grow) or less than a fifth (shrink), to twice their number.
    fn resize(&mut self) {
        self.purge();
        let capacity = self.slots.len();
        if self.len * 2 > capacity || (self.len * 5 < capacity && capacity > MIN_CAPACITY) {
            self.reallocate(((self.len + 1) * 2).max(MIN_CAPACITY));
        }
    }

    /// Removes forgotten keys without reallocating (linear-probing deletion with backward shift).
    fn purge(&mut self) {
        let forget = self.forget_before;
        let capacity = self.slots.len();
        let mut i = 0;
        while i < capacity {
            let s = self.slots[i];
            if s.tag != 0 && (s.minute & MINUTE_MASK) < forget {
                self.delete_at(i);
                // A later entry may have moved into `i`: look at it again.
            } else {
                i += 1;
            }
        }
    }

    /// Empties slot `hole` and shifts back the entries of its cluster that probe past it.
    fn delete_at(&mut self, mut hole: usize) {
        let capacity = self.slots.len();
        self.slots[hole] = Slot::default();
        self.len -= 1;
        let mut j = hole;
        loop {
            j += 1;
            if j == capacity {
                j = 0;
            }
            let s = self.slots[j];
            if s.tag == 0 {
                return;
            }
            let home = home_of_tag(s.tag, capacity);
            // `s` may stay if its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = s;
                self.slots[j] = Slot::default();
                hole = j;
            }
        }
    }

    fn reallocate(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); capacity]);
        for s in old.into_iter().filter(|s| s.tag != 0) {
            let mut i = home_of_tag(s.tag, capacity);
            while self.slots[i].tag != 0 {
                i += 1;
                if i == capacity {
                    i = 0;
                }
            }
            self.slots[i] = s;
        }
    }
}

/// Where a key's probe sequence starts: the tag mapped onto `0..capacity` (multiply-high).
/// Derived from the stored tag so a resize can re-place keys.
fn home_of_tag(tag: u64, capacity: usize) -> usize {
    let mixed = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (tag >> 29);
    ((mixed as u128 * capacity as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> EventKey {
        EventKey::of(&format!("evt-{i}"))
    }

    #[test]
    fn distinguishes_new_duplicate_and_conflict() {
        let mut t = DedupTable::default();
        let at = EventTime(60_000 * 100);
        assert_eq!(t.insert_new(key(1), 42, at), Seen::New);
        assert_eq!(t.insert_new(key(1), 42, at), Seen::Duplicate);
        assert_eq!(t.insert_new(key(1), 43, at), Seen::Conflict);
        assert_eq!(t.insert_new(key(2), 42, at), Seen::New);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn keeps_every_key_across_growth_and_drops_only_forgotten_ones() {
        let mut t = DedupTable::default();
        for i in 0..100_000u64 {
            assert_eq!(
                t.insert_new(key(i), i, EventTime((i as i64) * 60_000)),
                Seen::New
            );
        }
        for i in 0..100_000u64 {
            assert_eq!(
                t.get(key(i)).map(|e| e.payload),
                Some(payload_of(i)),
                "key {i}"
            );
        }
        // Forget the first half; the next growth drops them.
        t.forget_before(EventTime(50_000 * 60_000));
        for i in 100_000..200_000u64 {
            t.insert_new(key(i), i, EventTime((i as i64) * 60_000));
        }
        assert!(t.get(key(10)).is_none());
        assert!(t.get(key(60_000)).is_some());
        assert!(t.get(key(199_999)).is_some());
        assert_eq!(t.len(), 150_000);
        let per_key = t.allocated_bytes() as f64 / t.len() as f64;
        assert!((21.0..=32.5).contains(&per_key), "{per_key} bytes per key");
    }

    #[test]
    fn memory_plateaus_on_an_endless_stream() {
        let mut t = DedupTable::default();
        let mut peak = 0;
        for i in 0..2_000_000u64 {
            let minute = i / 100; // 100 keys per minute
            t.insert_new(key(i), i, EventTime(minute as i64 * 60_000));
            // Horizon of 1000 minutes = 100k live keys.
            t.forget_before(EventTime((minute as i64 - 1000) * 60_000));
            if i > 500_000 {
                peak = peak.max(t.allocated_bytes());
            }
        }
        let per_live_key = peak as f64 / 100_000.0;
        assert!(per_live_key <= 34.0, "{per_live_key} bytes per live key");
    }

    /// The table against a plain map, through growth, purges and shrinks: a key inside the
    /// horizon is always known; one outside it may be forgotten.
    #[test]
    fn agrees_with_a_map_through_purges() {
        use std::collections::HashMap;
        let mut t = DedupTable::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut horizon = 0u64;
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for step in 0..300_000u64 {
            let minute = step / 50;
            if step % 1000 == 0 {
                horizon = minute.saturating_sub(2000);
                t.forget_before(EventTime(horizon as i64 * 60_000));
            }
            // Mostly new ids, some repeats of random earlier ones.
            let id = if step % 7 == 0 {
                next() % (step + 1)
            } else {
                step
            };
            let seen = t.insert_new(key(id), id, EventTime(minute as i64 * 60_000));
            match model.get(&id) {
                Some(m) if *m >= horizon => assert_eq!(
                    seen,
                    Seen::Duplicate,
                    "step {step}: id {id} inside the horizon"
                ),
                Some(_) => assert!(seen == Seen::Duplicate || seen == Seen::New, "step {step}"),
                None => assert_eq!(seen, Seen::New, "step {step}: id {id} never seen"),
            }
            if seen == Seen::New {
                model.insert(id, minute);
            }
        }
        let kept = model.values().filter(|m| **m >= horizon).count();
        assert!(
            t.len() >= kept,
            "{} stored, {kept} inside the horizon",
            t.len()
        );
        let per_key = t.allocated_bytes() as f64 / kept as f64;
        assert!(
            per_key <= 45.0,
            "{per_key} bytes per key inside the horizon"
        );
    }

    #[test]
    fn voids_are_remembered() {
        let mut t = DedupTable::default();
        t.insert_new(key(1), 7, EventTime(0));
        assert!(t.mark_voided(key(1)));
        assert!(t.get(key(1)).unwrap().voided);
        assert!(!t.mark_voided(key(2)));
    }
}
