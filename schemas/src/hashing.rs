//! Deterministic hashing: the same value hashes the same in every process and every run, which
//! routing between timely workers and processes relies on.

use std::hash::{BuildHasherDefault, Hasher};

/// The idempotency key of an event: a 128-bit hash of its `event_id`.
///
/// The high 64 bits pick the worker and are the tag kept in the dedup table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct EventKey(pub u128);

impl EventKey {
    pub fn of(event_id: &str) -> EventKey {
        EventKey(xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()))
    }
    /// Which worker owns this key (timely masks or reduces it by the number of workers).
    pub fn route(self) -> u64 {
        (self.0 >> 64) as u64
    }
}

/// The worker, of `peers`, that deduplicates events of `route` (`UsageEvent::route`): timely's
/// own mapping of an exchange key (a mask for a power of two, the remainder otherwise, the same
/// worker either way). Decode sends a chunk's events there as one item, and a resumed run seeds
/// each worker with the keys it will judge.
pub fn dedup_worker(route: u64, peers: usize) -> usize {
    (route % peers.max(1) as u64) as usize
}

/// 64-bit fingerprint of arbitrary bytes.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A small, fast hasher for name → index maps (FxHash). Not for untrusted-key DoS resistance:
/// the maps it serves are built from the operator's own catalog.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
