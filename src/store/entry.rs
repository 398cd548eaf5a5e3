//! One map entry of the memory store: the counters of one (tier, scope key),
//! one [`Cell`] per limit, told apart by the limit's tag.
//!
//! Most callers use at most two limits of a tier per scope and hold cost in
//! one bucket each, so the common entry is **inline**: two tagged 8-byte
//! counters and an idle time, 24 bytes in all. An entry that needs more
//! (a third limit, or a sliding counter with cost in several buckets) moves
//! to the heap.

use std::num::NonZeroU32;

use crate::window::Cell;

/// Counters of one (tier, scope key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Up to two single-bucket counters; tag 0 marks a free place.
    Inline {
        /// Unix second after which every counter here is empty.
        idle_at: NonZeroU32,
        tags: [u16; 2],
        /// `idx | count << 32` of each counter.
        cells: [u64; 2],
    },
    /// Any number of counters, any shape.
    Heap(Box<[(u16, Cell)]>),
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

fn unpack(v: u64, idle_at: u32) -> Cell {
    Cell::One {
        idx: v as u32,
        count: (v >> 32) as u32,
        idle_at,
    }
}

impl Entry {
    /// Unix second after which the whole entry is empty.
    pub(crate) fn idle_at(&self) -> u32 {
        match self {
            Entry::Inline { idle_at, .. } => idle_at.get(),
            Entry::Heap(cells) => cells.iter().map(|(_, c)| c.idle_at()).max().unwrap_or(0),
        }
    }

    /// Cost held by its counters at `now` (ns since the epoch): 0 when idle.
    pub(crate) fn held(&self, now: u64) -> u64 {
        if self.is_idle(now) {
            return 0;
        }
        match self {
            Entry::Inline { cells, .. } => cells.iter().map(|c| c >> 32).sum(),
            Entry::Heap(cells) => cells.iter().map(|(_, c)| c.held()).sum(),
        }
    }

    /// Whether every counter is empty at `now` (ns since the epoch).
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        u64::from(self.idle_at()) * 1_000_000_000 <= now
    }

    /// Runs `f` on the counter tagged `tag` (an empty one if absent) and
    /// stores the result back.
    pub(crate) fn with_cell<R>(&mut self, tag: u16, f: impl FnOnce(&mut Cell) -> R) -> R {
        match self {
            Entry::Heap(cells) => {
                let pos = match cells.iter().position(|(t, _)| *t == tag) {
                    Some(p) => p,
                    None => {
                        let mut grown = std::mem::take(cells).into_vec();
                        grown.push((tag, Cell::default()));
                        *cells = grown.into_boxed_slice();
                        cells.len() - 1
                    }
                };
                f(&mut cells[pos].1)
            }
            Entry::Inline {
                idle_at,
                tags,
                cells,
            } => {
                let found = tags.iter().position(|t| *t == tag);
                let mut cell = match found {
                    Some(p) => unpack(cells[p], idle_at.get()),
                    None => Cell::default(),
                };
                let out = f(&mut cell);
                self.put(found, tag, cell);
                out
            }
        }
    }

    fn put(&mut self, found: Option<usize>, tag: u16, cell: Cell) {
        let Entry::Inline {
            idle_at,
            tags,
            cells,
        } = self
        else {
            return;
        };
        if let Cell::One {
            idx,
            count,
            idle_at: cell_idle,
        } = cell
        {
            // Its own place, else a free or empty one.
            let place = found.or_else(|| (0..2).find(|&i| tags[i] == 0 || (cells[i] >> 32) == 0));
            if let Some(p) = place {
                tags[p] = tag;
                cells[p] = u64::from(idx) | u64::from(count) << 32;
                *idle_at = (*idle_at).max(NonZeroU32::new(cell_idle).unwrap_or(NonZeroU32::MIN));
                return;
            }
        }
        // Does not fit inline: move everything to the heap.
        let idle = idle_at.get();
        let mut heap: Vec<(u16, Cell)> = (0..2)
            .filter(|&i| tags[i] != 0 && Some(i) != found)
            .map(|i| (tags[i], unpack(cells[i], idle)))
            .collect();
        heap.push((tag, cell));
        *self = Entry::Heap(heap.into_boxed_slice());
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

    #[test]
    fn two_counters_inline_then_heap() {
        let spec = WindowSpec::sliding_nanos(60 * S, 30);
        let mut e = Entry::default();
        for tag in [7, 9] {
            e.with_cell(tag, |c| c.try_charge(&spec, 5, 100 * S, 2).unwrap());
        }
        assert!(matches!(e, Entry::Inline { .. }));
        assert_eq!(e.with_cell(7, |c| c.peek(&spec, 5, 100 * S, 1).0.used), 2);
        // A third limit moves the entry to the heap, keeping the others.
        e.with_cell(11, |c| c.try_charge(&spec, 5, 100 * S, 1).unwrap());
        assert!(matches!(e, Entry::Heap(_)));
        assert_eq!(e.with_cell(9, |c| c.peek(&spec, 5, 100 * S, 1).0.used), 2);
        assert_eq!(e.with_cell(11, |c| c.peek(&spec, 5, 100 * S, 1).0.used), 1);
        assert!(!e.is_idle(100 * S));
        assert!(e.is_idle(200 * S));
    }

    #[test]
    fn a_busy_sliding_counter_moves_to_the_heap() {
        let spec = WindowSpec::sliding_nanos(60 * S, 30);
        let mut e = Entry::default();
        e.with_cell(1, |c| c.try_charge(&spec, 5, 100 * S, 1).unwrap());
        e.with_cell(1, |c| c.try_charge(&spec, 5, 110 * S, 1).unwrap());
        assert!(matches!(e, Entry::Heap(_)));
        assert_eq!(e.with_cell(1, |c| c.peek(&spec, 5, 110 * S, 1).0.used), 2);
    }
}
