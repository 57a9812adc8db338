//! The state behind a signed output table: what the table holds, and what to write so it matches
//! what the dataflow says.
//!
//! Derived rows arrive as differential updates `(row, time, diff)`. A writer feeds them in with
//! [`SignedState::update`] and, at each flush, takes the [`Change`]s of every completed time, in
//! time order. Updates that cancel within one time are never written. An insertion is versioned
//! and stamped with its time. A retraction is stamped with its time and carries the version of
//! the row it cancels, so the history shows which row each retraction undoes.
//!
//! Changes are never merged across times. A restart deletes the rows of times after the last
//! commit, and that must never take away a change that belongs to a committed time.
//!
//! A resumed run starts from the rows the table already holds. The dataflow re-derives those rows
//! from restored state and emits them again in the first pricing round. The state absorbs that
//! emission against the held rows, so the table only sees the real changes.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use meterflow_schemas::rows::{writer_of, ByCustomer};

use crate::Epoch;

/// A signed row of a derived table: (row, epoch, +1 / -1).
pub type Signed<R> = (R, Epoch, isize);

/// One row to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<R> {
    pub row: R,
    /// +1 inserts, -1 retracts.
    pub sign: i8,
    /// The version of the inserted row (for a retraction: of the row it cancels).
    pub version: u64,
    /// The time (epoch) whose output this change is.
    pub epoch: Epoch,
}

pub struct SignedState<R: Ord + Clone> {
    /// Updates not yet written, by time, in arrival order (sorted and consolidated when
    /// written: appending is cheaper than keeping every time's updates in a sorted map).
    pending: BTreeMap<Epoch, Vec<(R, isize)>>,
    /// Rows the table holds, with their multiplicity and version.
    held: BTreeMap<R, (isize, u64)>,
    horizon: Option<Horizon<R>>,
}

/// Rows that can no longer change need no version kept: a table whose rows carry a time (usage
/// buckets) forgets held rows more than `span` behind the newest row it has seen. The table's
/// sum never depends on this (changes are written as they come); only the version a very late
/// retraction would carry does, and the dataflow never retracts rows that old.
pub struct Horizon<R> {
    pub time: fn(&R) -> i64,
    pub span: i64,
    newest: i64,
    swept_at: i64,
}

impl<R> Horizon<R> {
    pub fn new(time: fn(&R) -> i64, span: i64) -> Horizon<R> {
        Horizon {
            time,
            span,
            newest: i64::MIN,
            swept_at: i64::MIN,
        }
    }
}

/// The held rows (row, multiplicity, version) that worker `index` of `peers` writes: those of
/// the customers it owns (see `meterflow_schemas::rows::writer_of`).
pub fn share<R: ByCustomer + Clone>(
    rows: &[(R, isize, u64)],
    index: usize,
    peers: usize,
) -> Vec<(R, isize, u64)> {
    rows.iter()
        .filter(|(r, _, _)| writer_of(r.customer(), peers) == index)
        .cloned()
        .collect()
}

impl<R: Ord + Clone> Default for SignedState<R> {
    fn default() -> Self {
        SignedState {
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            horizon: None,
        }
    }
}

impl<R: Ord + Clone> SignedState<R> {
    /// A table that already holds `rows` (row, net multiplicity, version), which the dataflow
    /// will emit again at the pricing round ending at `round_end`.
    pub fn resumed(rows: Vec<(R, isize, u64)>, round_end: Epoch) -> SignedState<R> {
        let mut s = SignedState::default();
        for (row, n, version) in rows {
            if n != 0 {
                s.held.insert(row.clone(), (n, version));
                s.update(row, round_end, -n);
            }
        }
        s
    }

    /// Keeps held rows only within `horizon` of the newest (see [`Horizon`]).
    pub fn forgetting(mut self, horizon: Horizon<R>) -> SignedState<R> {
        self.horizon = Some(horizon);
        self
    }

    /// Forgets held rows behind the horizon; sweeps once the newest row moved on by an eighth
    /// of the span, so the cost is amortized.
    fn sweep(&mut self) {
        let Some(h) = &mut self.horizon else { return };
        if h.newest == i64::MIN || h.newest.saturating_sub(h.swept_at) < h.span / 8 {
            return;
        }
        h.swept_at = h.newest;
        let (time, before) = (h.time, h.newest.saturating_sub(h.span));
        self.held.retain(|r, _| time(r) >= before);
    }

    pub fn update(&mut self, row: R, epoch: Epoch, diff: isize) {
        self.pending.entry(epoch).or_default().push((row, diff));
    }

    /// [`update`](Self::update) for a batch: a run of rows of one time (a batch usually is one)
    /// costs one lookup of that time, not one per row.
    pub fn extend(&mut self, rows: impl IntoIterator<Item = Signed<R>>) {
        let mut rows = rows.into_iter().peekable();
        while let Some(&(_, epoch, _)) = rows.peek() {
            let updates = self.pending.entry(epoch).or_default();
            updates.reserve(rows.size_hint().0);
            while let Some((row, _, diff)) = rows.next_if(|(_, t, _)| *t == epoch) {
                updates.push((row, diff));
            }
        }
    }

    /// A time's updates in row order, one per row, with their net diff.
    fn consolidated(mut updates: Vec<(R, isize)>) -> Vec<(R, isize)> {
        updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        updates.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 += next.1;
            }
            same
        });
        updates
    }

    /// The changes of every time before `frontier` (all, if `None`), in time order.
    pub fn changes(&mut self, frontier: Option<Epoch>) -> Vec<Change<R>> {
        // Sized once for a change per update (more only where a row's net diff exceeds one):
        // grown push by push, it was copied over again at every doubling (B2, session 34).
        let due = match frontier {
            Some(f) => self.pending.range(..f).map(|(_, u)| u.len()).sum(),
            None => self.pending.values().map(Vec::len).sum(),
        };
        let mut out = Vec::with_capacity(due);
        self.drain(frontier, |c| {
            out.push(c);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        out
    }

    /// Hands the changes of every time before `frontier` (all, if `None`) to `emit`, in time
    /// order, without gathering them first: a flush of a large table (usage buckets) then costs
    /// no copy of all its changes. On an error from `emit` the changes not yet handed over are
    /// lost to this state, so the caller must treat the error as fatal for the run.
    pub fn drain<E>(
        &mut self,
        frontier: Option<Epoch>,
        mut emit: impl FnMut(Change<R>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut insertions = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            let epoch = *entry.key();
            if frontier.is_some_and(|f| epoch >= f) {
                break;
            }
            let updates = entry.remove();
            insertions.reserve(updates.len());
            // Within a time, retractions first: a reader in insertion order sees old before new.
            // Rows are distinct after consolidation, so the two passes see the same state.
            for (row, diff) in Self::consolidated(updates) {
                if diff == 0 {
                    continue;
                }
                if let Some(h) = &mut self.horizon {
                    h.newest = h.newest.max((h.time)(&row));
                }
                if diff > 0 {
                    insertions.push((row, diff));
                    continue;
                }
                let version = match self.held.get_mut(&row) {
                    Some(held) => {
                        let version = held.1;
                        held.0 += diff;
                        if held.0 == 0 {
                            self.held.remove(&row);
                        }
                        version
                    }
                    None => {
                        self.held.insert(row.clone(), (diff, epoch));
                        epoch
                    }
                };
                Self::repeat(row, -1, version, epoch, diff.unsigned_abs(), &mut emit)?;
            }
            for (row, diff) in insertions.drain(..) {
                // One descent: an inserted row is nearly always new to the table (its copy is
                // wasted only when the table already holds the same row).
                match self.held.entry(row.clone()) {
                    Entry::Occupied(mut held) => {
                        let (n, version) = held.get_mut();
                        *n += diff;
                        *version = epoch;
                        if *n == 0 {
                            held.remove();
                        }
                    }
                    Entry::Vacant(slot) => {
                        slot.insert((diff, epoch));
                    }
                }
                Self::repeat(row, 1, epoch, epoch, diff.unsigned_abs(), &mut emit)?;
            }
        }
        self.sweep();
        Ok(())
    }

    /// `times` copies of one change (a row's net diff can exceed one).
    fn repeat<E>(
        row: R,
        sign: i8,
        version: u64,
        epoch: Epoch,
        times: usize,
        emit: &mut impl FnMut(Change<R>) -> Result<(), E>,
    ) -> Result<(), E> {
        for _ in 1..times {
            emit(Change {
                row: row.clone(),
                sign,
                version,
                epoch,
            })?;
        }
        emit(Change {
            row,
            sign,
            version,
            epoch,
        })
    }

    /// The rows the table holds now.
    pub fn held(&self) -> impl Iterator<Item = (&R, isize)> {
        self.held.iter().map(|(r, (n, _))| (r, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(row: &'static str, sign: i8, version: u64, epoch: Epoch) -> Change<&'static str> {
        Change {
            row,
            sign,
            version,
            epoch,
        }
    }

    #[test]
    fn changes_come_per_time_and_retractions_keep_versions() {
        let mut s = SignedState::default();
        s.update("a", 3, 1);
        s.update("b", 3, 1);
        s.update("b", 3, -1);
        s.update("a", 7, -1);
        s.update("c", 7, 1);
        s.update("d", 9, 1);
        // Time 9 is not complete yet: it stays.
        assert_eq!(
            s.changes(Some(8)),
            vec![c("a", 1, 3, 3), c("a", -1, 3, 7), c("c", 1, 7, 7)]
        );
        assert_eq!(s.held().collect::<Vec<_>>(), vec![(&"c", 1)]);
        assert_eq!(s.changes(None), vec![c("d", 1, 9, 9)]);
    }

    #[test]
    fn inserting_a_row_the_table_already_holds_adds_to_it() {
        let mut s = SignedState::default();
        s.update("a", 3, 1);
        s.update("a", 5, 1);
        assert_eq!(s.changes(None), vec![c("a", 1, 3, 3), c("a", 1, 5, 5)]);
        assert_eq!(s.held().collect::<Vec<_>>(), vec![(&"a", 2)]);
        // A retraction carries the version of the latest insertion.
        s.update("a", 6, -1);
        assert_eq!(s.changes(None), vec![c("a", -1, 5, 6)]);
        assert_eq!(s.held().collect::<Vec<_>>(), vec![(&"a", 1)]);
        // A row retracted before the table held it, then inserted: nothing of it is left held.
        s.update("z", 7, -1);
        s.update("z", 8, 1);
        assert_eq!(s.changes(None), vec![c("z", -1, 7, 7), c("z", 1, 8, 8)]);
        assert_eq!(s.held().collect::<Vec<_>>(), vec![(&"a", 1)]);
    }

    #[test]
    fn a_batch_of_several_times_is_the_same_as_one_update_at_a_time() {
        let batch = vec![
            ("a", 3, 1),
            ("b", 3, 1),
            ("a", 5, -1),
            ("c", 3, 1),
            ("c", 5, 1),
            ("b", 5, -1),
        ];
        let mut one_by_one = SignedState::default();
        for (r, t, d) in batch.clone() {
            one_by_one.update(r, t, d);
        }
        let mut batched = SignedState::default();
        batched.extend(batch);
        let expected = one_by_one.changes(None);
        assert_eq!(expected.len(), 6);
        assert_eq!(batched.changes(None), expected);
    }

    #[test]
    fn rows_behind_the_horizon_are_forgotten_and_the_state_stays_bounded() {
        // Rows are (time, meter); keep 100 behind the newest.
        let mut s: SignedState<(i64, u32)> =
            SignedState::default().forgetting(Horizon::new(|r: &(i64, u32)| r.0, 100));
        for t in 0..10_000i64 {
            s.update((t, (t % 3) as u32), t as Epoch, 1);
            let written = s.changes(None);
            assert_eq!(written.len(), 1, "every change is still written");
            assert!(s.held.len() <= 100 + 100 / 8 + 1, "held {}", s.held.len());
        }
        // A row inside the horizon keeps its version for a retraction.
        s.update((9_990, 0), 20_000, -1);
        assert_eq!(s.changes(None)[0].version, 9_990);
    }

    #[test]
    fn a_resumed_table_absorbs_the_re_emitted_rows() {
        let mut s = SignedState::resumed(vec![("a", 1, 7), ("b", 1, 7)], 11);
        assert!(s.changes(Some(9)).is_empty());
        // The dataflow re-emits a and b at 11, and b has changed into b2.
        s.update("a", 11, 1);
        s.update("b2", 11, 1);
        assert_eq!(
            s.changes(Some(12)),
            vec![c("b", -1, 7, 11), c("b2", 1, 11, 11)]
        );
    }
}
