//! One map entry of the memory store: the counters of one (tier, scope key),
//! one [`Cell`] per limit, told apart by the limit's tag.
//!
//! Most callers use at most two limits of a tier per scope and hold cost in
//! one bucket each, so the common entry is **inline**: two tagged 8-byte
//! counters and an idle time, 24 bytes in all. An entry that needs more
//! (a third limit, or a sliding counter with cost in several buckets) moves
//! to the heap.

use std::num::NonZeroU32;

use crate::window::{Cell, WindowSpec};

/// Counters of one (tier, scope key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Up to two single-bucket counters; tag 0 marks a free place.
    Inline {
        /// Unix second after which every counter here is empty.
        idle_at: NonZeroU32,
        tags: [u16; 2],
        /// Each counter packed in 8 bytes (see [`pack`]).
        cells: [u64; 2],
    },
    /// Any number of counters, any shape.
    Heap(Box<Spilled>),
}

/// The counters of an entry that does not fit inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spilled {
    /// Unix second after which every counter here is empty.
    idle_at: u32,
    cells: Cells,
}

/// Tagged counters: the first two in place (tag 0 marks a free one), so
/// that the common spilled entry — two limits, one of them a ring of
/// buckets — is one allocation fewer to follow on every decision; any
/// further ones in a vector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Cells {
    head: [(u16, Cell); 2],
    rest: Vec<(u16, Cell)>,
}

impl Cells {
    fn iter(&self) -> impl Iterator<Item = &(u16, Cell)> {
        self.head
            .iter()
            .filter(|(t, _)| *t != 0)
            .chain(self.rest.iter())
    }

    fn get(&self, tag: u16) -> Option<&Cell> {
        self.iter().find(|(t, _)| *t == tag).map(|(_, c)| c)
    }

    /// The counter tagged `tag` (never 0), made empty if absent.
    fn get_or_insert(&mut self, tag: u16) -> &mut Cell {
        if let Some(i) = self.head.iter().position(|(t, _)| *t == tag) {
            return &mut self.head[i].1;
        }
        if let Some(i) = self.rest.iter().position(|(t, _)| *t == tag) {
            return &mut self.rest[i].1;
        }
        self.push(tag, Cell::default())
    }

    fn push(&mut self, tag: u16, cell: Cell) -> &mut Cell {
        if let Some(i) = self.head.iter().position(|(t, _)| *t == 0) {
            self.head[i] = (tag, cell);
            return &mut self.head[i].1;
        }
        self.rest.push((tag, cell));
        let last = self.rest.len() - 1;
        &mut self.rest[last].1
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry::Inline {
            idle_at: NonZeroU32::MIN,
            tags: [0; 2],
            cells: [0; 2],
        }
    }
}

/// Counts up to this fit a packed counter (larger ones move to the heap).
const COUNT_BITS: u32 = 24;
const STAMP_BITS: u32 = 64 - COUNT_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// A single-bucket counter in 8 bytes: its count (24 bits) and the low 40
/// bits of its `last` (milliseconds since the epoch), which [`unpack`]
/// restores from "now", within 2^39 ms (17 years) of it. `None` when the
/// count is too large.
fn pack(cell: &Cell) -> Option<u64> {
    match cell {
        Cell::One { count: 0, .. } => Some(0),
        Cell::One { count, last } if u64::from(*count) <= COUNT_MASK => {
            Some(u64::from(*count) | (last & STAMP_MASK) << COUNT_BITS)
        }
        _ => None,
    }
}

fn unpack(v: u64, reference: u64) -> Cell {
    let count = (v & COUNT_MASK) as u32;
    if count == 0 {
        return Cell::default();
    }
    let low = v >> COUNT_BITS;
    // Signed distance from `reference` back to the stored value, in 40 bits.
    let back = (reference.wrapping_sub(low) & STAMP_MASK) as i64;
    let back = (back << COUNT_BITS) >> COUNT_BITS;
    let last = if back >= 0 {
        reference.saturating_sub(back as u64)
    } else {
        reference.saturating_add(back.unsigned_abs())
    };
    Cell::One { count, last }
}

fn now_ms(now: u64) -> u64 {
    now / 1_000_000
}

impl Entry {
    /// Unix second after which the whole entry is empty.
    pub(crate) fn idle_at(&self) -> u32 {
        match self {
            Entry::Inline { idle_at, .. } => idle_at.get(),
            Entry::Heap(s) => s.idle_at,
        }
    }

    /// Whether it has a counter tagged `tag` (so counts the same limits as
    /// an entry of that tag's tier would, in the same units).
    pub(crate) fn has_tag(&self, tag: u16) -> bool {
        match self {
            Entry::Inline { tags, .. } => tag != 0 && tags.contains(&tag),
            Entry::Heap(s) => s.cells.get(tag).is_some(),
        }
    }

    /// Cost held by its counters at `now` (ns since the epoch): 0 when idle.
    pub(crate) fn held(&self, now: u64) -> u64 {
        if self.is_idle(now) {
            return 0;
        }
        match self {
            Entry::Inline { cells, .. } => cells.iter().map(|c| c & COUNT_MASK).sum(),
            Entry::Heap(s) => s.cells.iter().map(|(_, c)| c.held()).sum(),
        }
    }

    /// Whether every counter is empty at `now` (ns since the epoch).
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        u64::from(self.idle_at()) * 1_000_000_000 <= now
    }

    /// A copy of the counter tagged `tag` at `now` (ns since the epoch; an
    /// empty one if absent), when it holds at most one bucket; `None` for a
    /// ring of buckets, which is not copied (it would allocate).
    pub(crate) fn copy_cell(&self, tag: u16, now: u64) -> Option<Cell> {
        match self {
            Entry::Inline { tags, cells, .. } => Some(
                tags.iter()
                    .position(|t| *t == tag)
                    .map_or_else(Cell::default, |p| unpack(cells[p], now_ms(now))),
            ),
            Entry::Heap(s) => match s.cells.get(tag) {
                None => Some(Cell::default()),
                Some(c @ Cell::One { .. }) => Some(c.clone()),
                Some(_) => None,
            },
        }
    }

    /// A copy of the counter tagged `tag` at `now` (ns since the epoch; an
    /// empty one if absent), a ring of buckets included (it allocates: for
    /// reads off the request path, such as a usage report).
    pub(crate) fn cell_clone(&self, tag: u16, now: u64) -> Cell {
        match self {
            Entry::Heap(s) => s.cells.get(tag).cloned().unwrap_or_default(),
            _ => self.copy_cell(tag, now).unwrap_or_default(),
        }
    }

    /// Runs `f` on the counter tagged `tag` of window `spec` (an empty one
    /// if absent) at `now`, and stores the result back. Inlined: it runs for
    /// every limit of every decision, and a call was about 40 instructions.
    #[inline(always)]
    pub(crate) fn with_cell<R>(
        &mut self,
        tag: u16,
        spec: &WindowSpec,
        now: u64,
        f: impl FnOnce(&mut Cell) -> R,
    ) -> R {
        match self {
            Entry::Heap(s) => {
                let cell = s.cells.get_or_insert(tag);
                let out = f(cell);
                // Written only when it moves (once a second at most under
                // steady traffic): a busy key's entry is shared by every
                // core that serves it, and an unchanged line stays shared.
                let idle = cell.idle_at(spec);
                if idle > s.idle_at {
                    s.idle_at = idle;
                }
                out
            }
            Entry::Inline { tags, cells, .. } => {
                let found = tags.iter().position(|t| *t == tag);
                let mut cell = match found {
                    Some(p) => unpack(cells[p], now_ms(now)),
                    None => Cell::default(),
                };
                let out = f(&mut cell);
                self.put(found, tag, spec, now, cell);
                out
            }
        }
    }

    fn put(&mut self, found: Option<usize>, tag: u16, spec: &WindowSpec, now: u64, cell: Cell) {
        let Entry::Inline {
            idle_at,
            tags,
            cells,
        } = self
        else {
            return;
        };
        let cell_idle = cell.idle_at(spec);
        if let Some(packed) = pack(&cell) {
            // Its own place, else a free or empty one.
            let place =
                found.or_else(|| (0..2).find(|&i| tags[i] == 0 || cells[i] & COUNT_MASK == 0));
            if let Some(p) = place {
                tags[p] = tag;
                cells[p] = packed;
                if cell_idle > idle_at.get() {
                    *idle_at = NonZeroU32::new(cell_idle).unwrap_or(NonZeroU32::MIN);
                }
                return;
            }
        }
        // Does not fit inline: move everything to the heap.
        let idle = idle_at.get().max(cell_idle);
        let mut spilled = Cells::default();
        for i in 0..2 {
            if tags[i] != 0 && Some(i) != found && cells[i] & COUNT_MASK != 0 {
                spilled.push(tags[i], unpack(cells[i], now_ms(now)));
            }
        }
        spilled.push(tag, cell);
        *self = Entry::Heap(Box::new(Spilled {
            idle_at: idle,
            cells: spilled,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowSpec;

    const S: u64 = 1_000_000_000;

    #[test]
    fn entry_is_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    fn used(e: &mut Entry, tag: u16, spec: &WindowSpec, now: u64) -> u64 {
        e.with_cell(tag, spec, now, |c| c.peek(spec, 5, now, 1).0.used)
    }

    #[test]
    fn two_counters_inline_then_heap() {
        let spec = WindowSpec::sliding_ms(60_000, 30);
        let t = 100 * S;
        let mut e = Entry::default();
        for tag in [7, 9] {
            e.with_cell(tag, &spec, t, |c| c.try_charge(&spec, 5, t, 2).unwrap());
        }
        assert!(matches!(e, Entry::Inline { .. }));
        assert_eq!(used(&mut e, 7, &spec, t), 2);
        // A third limit moves the entry to the heap, keeping the others.
        e.with_cell(11, &spec, t, |c| c.try_charge(&spec, 5, t, 1).unwrap());
        assert!(matches!(e, Entry::Heap(_)));
        assert_eq!(used(&mut e, 9, &spec, t), 2);
        assert_eq!(used(&mut e, 11, &spec, t), 1);
        assert!(!e.is_idle(t));
        assert!(!e.is_idle(160 * S - 1));
        assert!(e.is_idle(160 * S));
    }

    #[test]
    fn a_busy_sliding_counter_moves_to_the_heap() {
        let spec = WindowSpec::sliding_ms(60_000, 30);
        let mut e = Entry::default();
        e.with_cell(1, &spec, 100 * S, |c| {
            c.try_charge(&spec, 5, 100 * S, 1).unwrap()
        });
        e.with_cell(1, &spec, 110 * S, |c| {
            c.try_charge(&spec, 5, 110 * S, 1).unwrap()
        });
        assert!(matches!(e, Entry::Heap(_)));
        assert_eq!(used(&mut e, 1, &spec, 110 * S), 2);
        assert_eq!(used(&mut e, 1, &spec, 160 * S), 1);
    }

    #[test]
    fn packed_counters_keep_their_instants_and_spill_large_counts() {
        // Far from the epoch, a sliding and a fixed counter side by side.
        let sliding = WindowSpec::sliding_ms(1000, 10);
        let fixed = WindowSpec::fixed_ms(86_400_000, 0);
        let t = 1_790_000_000 * S + 123_456_789;
        let mut e = Entry::default();
        e.with_cell(1, &sliding, t, |c| c.try_charge(&sliding, 5, t, 3).unwrap());
        e.with_cell(2, &fixed, t, |c| c.try_charge(&fixed, 5, t, 4).unwrap());
        assert!(matches!(e, Entry::Inline { .. }));
        // Read back later: the sliding cost leaves exactly 1 s after its
        // stamp (t rounded up to the millisecond).
        let stamp = crate::window::stamp_nanos(t);
        assert_eq!(used(&mut e, 1, &sliding, stamp + S - 1), 3);
        assert_eq!(used(&mut e, 2, &fixed, t + 3600 * S), 4);
        // A count past 24 bits moves the entry to the heap, keeping both.
        let big = WindowSpec::sliding_ms(60_000, 1);
        e.with_cell(3, &big, t, |c| c.charge_unchecked(&big, t, 1 << 25));
        assert!(matches!(e, Entry::Heap(_)));
        assert_eq!(used(&mut e, 1, &sliding, stamp + S - 1), 3);
        assert_eq!(used(&mut e, 1, &sliding, stamp + S), 0);
        assert_eq!(used(&mut e, 2, &fixed, t + 3600 * S), 4);
        assert_eq!(e.with_cell(3, &big, t, |c| c.held()), 1 << 25);
    }

    #[test]
    fn a_clock_that_went_back_still_finds_the_counter() {
        let spec = WindowSpec::sliding_ms(10_000, 10);
        let t = 1_800_000_000 * S;
        let mut e = Entry::default();
        e.with_cell(1, &spec, t, |c| c.try_charge(&spec, 2, t, 2).unwrap());
        // Read five seconds "earlier": still counted in full.
        assert_eq!(used(&mut e, 1, &spec, t - 5 * S), 2);
    }
}
