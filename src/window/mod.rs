//! The counting maths: sliding and clock-aligned (fixed) windows.
//!
//! Everything here is pure: functions take "now" as an argument and never read a
//! clock, so they can be property-tested against a brute-force model
//! (`model_tests.rs`). Only the window shape ([`WindowSpec`]) and the figures a
//! decision reports ([`View`], [`Refusal`]) are public, through
//! [`crate::store`]; the counters themselves are private to the memory store.
//!
//! # The millisecond clock
//!
//! Windows count in whole milliseconds. A charge at instant `t` is
//! **stamped** `⌈t⌉`, `t` rounded up to the millisecond; a counted cost whose
//! window ends at the millisecond `e` still counts at `t` while
//! `⌊t⌋ < e`, i.e. while `t < e`. Window lengths and sub-bucket widths are
//! whole milliseconds (rounded up).
//!
//! # Sliding windows
//!
//! A sliding window of length `W` counts admitted cost in sub-buckets of
//! width `B` (about `W / precision`, at least 1 ms), aligned to the Unix
//! epoch: a charge stamped `s` goes to bucket `floor(s / B)`. Each bucket
//! remembers its cost and the stamp of its **last** admission `L`; the
//! bucket's cost counts until `L + W`, then all of it leaves at once. A
//! request is admitted when the cost still counted plus its own fits in the
//! capacity.
//!
//! * **The hard guarantee.** Every admission is stamped no earlier than it
//!   happened, so at any admission `x`, every cost admitted in `(x - W, x]`
//!   sits in a bucket whose last stamp is past `x - W`: it is counted, and
//!   the check saw it. So **in every interval of length `W` the admitted cost
//!   never exceeds the capacity**.
//! * **A burst leaves exactly one window after it.** Cost admitted within one
//!   bucket stops counting exactly `W` after the last of it was admitted (to
//!   the millisecond: the stamp rounds up).
//! * **Spread traffic** is counted at most one bucket late: a cost admitted
//!   at `y` leaves at its bucket's last stamp plus `W`, which is less than
//!   `B` after `⌈y⌉ + W`. A request may therefore be admitted up to `B - 1 ms`
//!   later than an exact sliding log would admit it, never earlier.
//! * **Figures stay within the window.** Every reset and retry instant is
//!   some bucket's `L + W` with `L` at most the current stamp, so it is at
//!   most `W` after the decision (measured from the decision's stamp, which
//!   stores report as the decision instant).
//!
//! # Fixed windows
//!
//! A fixed window of length `W` with a UTC offset `o` resets whenever
//! `t + o` crosses a multiple of `W`: a one-minute window at `:00` seconds,
//! an hour at `:00`, a day at local midnight of that offset. With a time
//! zone (feature `tz`), the same on the zone's wall clock, across daylight
//! saving changes (see `zone.rs`).
//!
//! # Memory
//!
//! A counter ([`Cell`]) with a single non-empty bucket is 16 bytes (the
//! memory store packs it into 8 inside an entry); only when a sliding counter
//! holds cost in two or more buckets does it allocate a ring of one 8-byte
//! slot per bucket.

mod cell;
#[cfg(test)]
mod cell_tests;
mod millis;
#[cfg(test)]
mod model_tests;
mod spec;
mod view;
mod zone;
#[cfg(all(test, feature = "tz"))]
mod zone_tests;

pub(crate) use cell::{Cell, Mark};
pub(crate) use millis::stamp_nanos;
pub(crate) use spec::Shape;
pub use spec::{WindowSpec, DEFAULT_PRECISION, MAX_PRECISION};
pub use view::{Refusal, View};
pub(crate) use zone::lookup as lookup_zone;
