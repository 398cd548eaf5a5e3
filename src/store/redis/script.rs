//! The Lua script: its arguments, the call, and reading its answer.

use std::future::Future;
use std::sync::atomic::Ordering;

use crate::clock::Timestamp;
use crate::store::{
    Batch, CounterKey, Outcome, Receipt, Refusal, StoreError, StoreErrorKind, Verdict, View,
};

use super::charges::QueuedCharge;
use super::connection::Conn;
use super::leases::Ask;
use super::problem::RedisProblem;
use super::{GiveBack, Inner, TimeSource};

pub(super) const SCRIPT: &str = include_str!("script.lua");

pub(super) type CallResult =
    Result<Result<Vec<i64>, redis::RedisError>, tokio::time::error::Elapsed>;

pub(super) fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// A window's shape as the script reads it: bucket width, buckets still
/// counted before the current one, UTC offset, the window length (0 for a
/// fixed window); for a fixed window in a time zone, the window `index`
/// gives and its end (the script has no time zone rules); milliseconds.
/// A window shape as the script reads it: bucket, reach, offset, window
/// (0: fixed), and a zoned fixed window's index and end on the caller's
/// clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ShapeArgs {
    pub(super) bucket: u64,
    pub(super) reach: u64,
    pub(super) offset: i64,
    pub(super) window: u64,
    pub(super) zoned: Option<(u64, u64)>,
}

impl ShapeArgs {
    fn pack(&self, p: &mut Packed) {
        p.u(self.bucket).u(self.reach).i(self.offset).u(self.window);
        match self.zoned {
            Some((i, end)) => p.u(i).u(end),
            None => p.i(-1).i(-1),
        };
    }
}

/// The script's numbers, packed as little-endian doubles (one argument:
/// the script reads a limit's seven with one `struct.unpack`, rather than
/// parsing seven arguments). Every value is a whole number below 2^53 in
/// magnitude, exact as a double.
#[derive(Debug, Default)]
struct Packed(Vec<u8>);

impl Packed {
    fn with_capacity(values: usize) -> Packed {
        Packed(Vec::with_capacity(8 * values))
    }

    fn f(&mut self, v: f64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    #[allow(clippy::cast_precision_loss)]
    fn u(&mut self, v: u64) -> &mut Self {
        self.f(v as f64)
    }

    #[allow(clippy::cast_precision_loss)]
    fn i(&mut self, v: i64) -> &mut Self {
        self.f(v as f64)
    }

    /// A post-charge giving back `units` to bucket `index`.
    fn give_back(&mut self, tag: u64, shape: u64, units: u64, index: u64) {
        let units = -i64::try_from(units).unwrap_or(i64::MAX);
        self.u(tag).u(shape).i(units).i(0).u(index);
    }
}

/// The distinct shapes of one call, in order of first use.
#[derive(Debug, Default)]
pub(super) struct Shapes(Vec<ShapeArgs>);

impl Shapes {
    /// The number (from 1) of `w`'s shape, `index` giving a zoned window's
    /// index.
    fn number(&mut self, w: &crate::store::WindowSpec, index: impl FnOnce() -> u64) -> usize {
        let shape = ShapeArgs {
            bucket: w.bucket_ms(),
            reach: w.reach(),
            offset: w.offset_ms(),
            window: if w.is_sliding() { w.window_ms() } else { 0 },
            zoned: w.zone().map(|_| {
                let i = index();
                (i, w.end_ms(i))
            }),
        };
        match self.0.iter().position(|s| *s == shape) {
            Some(k) => k + 1,
            None => {
                self.0.push(shape);
                self.0.len()
            }
        }
    }
}

/// The script's answer: little-endian doubles, each a whole number below
/// 2^53 (an answer of another length reads as no values, which every
/// caller refuses as the wrong number).
pub(super) fn doubles(bytes: &[u8]) -> Vec<i64> {
    if !bytes.len().is_multiple_of(8) {
        return Vec::new();
    }
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            // Saturating; NaN reads as 0.
            f64::from_le_bytes(b) as i64
        })
        .collect()
}

/// An instant the script answered, in milliseconds since the epoch.
pub(super) fn ts(ms: i64) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

/// The script's answer for one batch.
pub(super) fn fill_one(batch: &mut Batch, v: &[i64]) -> Result<(), StoreError> {
    expect_len(v, [&*batch])?;
    fill(batch, v, 1)
}

/// Values the script answers per limit.
pub(super) const PER_LIMIT: usize = 7;

/// Whether the script's answer `v` has the length an answer for `batches`
/// has: the stamp, then per batch its admission and seven values a limit.
pub(super) fn expect_len<'a>(
    v: &[i64],
    batches: impl IntoIterator<Item = &'a Batch>,
) -> Result<(), StoreError> {
    let want = 1 + batches
        .into_iter()
        .map(|b| 1 + PER_LIMIT * b.len())
        .sum::<usize>();
    if v.len() == want {
        Ok(())
    } else {
        Err(bad_answer("the script answered the wrong number of values"))
    }
}

pub(super) fn bad_answer(why: &'static str) -> StoreError {
    StoreError::new(StoreErrorKind::Protocol, why)
}

/// Fills `batch` from the script's answer `v` (its stamp first), whose
/// values for the batch start at `at` (its admission, then seven per
/// limit); the caller has checked that they are there.
pub(super) fn fill(batch: &mut Batch, v: &[i64], at: usize) -> Result<(), StoreError> {
    batch.set_decided_at(ts(v[0]));
    for i in 0..batch.len() {
        let l = *batch.limit(i);
        let r = &v[at + 1 + PER_LIMIT * i..at + 1 + PER_LIMIT * (i + 1)];
        let mut view = View::new(l.capacity, u64::try_from(r[1]).unwrap_or(0), ts(r[2]));
        if r[0] == 0 && r[3] > 0 {
            // Room: the retry slot says when the oldest record leaves.
            view = view.with_frees_at(Some(ts(r[3])));
        }
        let verdict = match r[0] {
            0 => Verdict::Room(Receipt::new(l.key, u64::try_from(r[4]).unwrap_or(0))),
            1 => Verdict::Passed,
            2 => Verdict::Refused(Refusal::Full { retry_at: ts(r[3]) }),
            3 => Verdict::Refused(Refusal::NeverFits),
            _ => return Err(bad_answer("the script answered an unknown verdict")),
        };
        batch.record(i, Outcome::new(view, verdict));
    }
    if (v[at] == 1) != batch.admitted() {
        return Err(bad_answer(
            "the script's admission disagrees with its verdicts",
        ));
    }
    Ok(())
}

impl Inner {
    /// One script call (`EVALSHA`, and `SCRIPT LOAD` then again after a
    /// `NOSCRIPT`): post-charges and give-backs, then the batches, one
    /// after the other, decided at `now`, with what each asks of leases
    /// (`asks[b]`: one [`Ask`] per limit of batch `b`, or none).
    ///
    /// The command is built here, sized once with every key written
    /// through one buffer, rather than through redis-rs's
    /// `Script::prepare_invoke` (one allocation an argument, then copied
    /// into a command): `cargo bench --bench script_call --features redis`
    /// measured the Script API at 2.0–2.2 times this one's cost for one
    /// decision (0.76–0.83 µs against 1.68–1.70 µs) and 2.2–2.7 times for a
    /// group of 64 decisions, on the 2-core VM. `NOSCRIPT` is handled as
    /// `ScriptInvocation::invoke_async` does (load, send again); on a
    /// cluster the node that lacks the script loads it (see `nodes`).
    pub(super) fn call(
        &self,
        conn: &Conn,
        now: Option<Timestamp>,
        batches: &[&Batch],
        asks: &[&[Ask]],
        charges: &[QueuedCharge],
        give_back: &[GiveBack],
    ) -> impl Future<Output = CallResult> + Send + 'static {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let limits: usize = batches.iter().map(|b| b.len()).sum();
        // Each request's keys once (its limits mostly share its caller's
        // counters), and the number of every limit's key.
        let mut distinct: Vec<CounterKey> = Vec::with_capacity(limits);
        let mut key_of: Vec<usize> = Vec::with_capacity(limits);
        for b in batches {
            let first = distinct.len();
            for l in b.limits() {
                let k = match distinct[first..].iter().position(|d| *d == l.key) {
                    Some(p) => first + p,
                    None => {
                        distinct.push(l.key);
                        distinct.len() - 1
                    }
                };
                key_of.push(k + 1);
            }
        }
        let keys = distinct.len() + charges.len() + give_back.len();
        // Sized once: the keys, and the packed numbers.
        let mut cmd = redis::Cmd::with_capacity(
            6 + keys,
            128 + keys * (self.prefix.len() + 36)
                + 8 * (5 + batches.len() + 8 * limits + 5 * keys + 6 * 4),
        );
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(keys);
        // Every key written through one buffer (no string a key).
        let mut key = String::with_capacity(self.prefix.len() + 36);
        let all = distinct.iter().copied();
        let all = all
            .chain(charges.iter().map(|w| w.charge.receipt.key()))
            .chain(give_back.iter().map(|g| g.limit.key));
        for k in all {
            self.write_key(&mut key, k);
            cmd.arg(key.as_bytes());
        }
        // On the caller's clock, a call without a decision (the flusher)
        // takes the newest measurement it carries as "now".
        let now = now.or_else(|| charges.iter().map(|w| w.at).max());
        // Zoned fixed windows are placed by this clock (Lua has no zones).
        let caller_now = now.unwrap_or(Timestamp::EPOCH);
        match (self.time, now) {
            (TimeSource::Caller, Some(t)) => cmd
                .arg(t.as_nanos() / 1_000_000)
                .arg(t.as_nanos().div_ceil(1_000_000)),
            _ => cmd.arg("").arg(""),
        };
        let mut p = Packed::with_capacity(4 + batches.len() + 6 * 4 + 7 * keys);
        // Each distinct window shape is sent once, and numbered: the script
        // reads a shape's six values once however many limits use it.
        let mut shapes = Shapes::default();
        let limit_shapes: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.limits())
            .map(|l| shapes.number(&l.window, || l.window.index(caller_now)))
            .collect();
        let charge_shapes: Vec<usize> = charges
            .iter()
            .map(|w| {
                let l = &w.charge.limit;
                match w.back {
                    Some(i) => shapes.number(&l.window, || i),
                    None => shapes.number(&l.window, || l.window.index(w.at)),
                }
            })
            .collect();
        let back_shapes: Vec<usize> = give_back
            .iter()
            .map(|g| shapes.number(&g.limit.window, || g.index))
            .collect();
        p.u(batches.len() as u64)
            .u((charges.len() + give_back.len()) as u64)
            .u(shapes.0.len() as u64)
            .u(self.leases.life_ms)
            .u(distinct.len() as u64);
        for b in batches {
            p.u(b.len() as u64);
        }
        for shape in &shapes.0 {
            shape.pack(&mut p);
        }
        const NONE: Ask = Ask {
            want: 0,
            held: None,
            cover: None,
        };
        let limits = batches.iter().enumerate().flat_map(|(b, batch)| {
            let asks = asks.get(b).copied().unwrap_or(&[]);
            batch
                .limits()
                .enumerate()
                .map(move |(i, l)| (l, asks.get(i).unwrap_or(&NONE)))
        });
        for (((l, ask), shape), key) in limits.zip(limit_shapes).zip(key_of) {
            let group = l.cascade.map_or(0, u32::from);
            // A cost taken from this instance's lease is not charged again.
            let (check, charge) = if ask.local() {
                (0, 0)
            } else {
                (l.check_cost(), l.charge_cost())
            };
            p.u(u64::from(l.tag))
                .u(shape as u64)
                .u(l.capacity)
                .u(check)
                .u(charge)
                .u(u64::from(group))
                .u(ask.want)
                .u(key as u64);
        }
        for (w, shape) in charges.iter().zip(charge_shapes) {
            let c = &w.charge;
            let (tag, shape) = (u64::from(c.limit.tag), shape as u64);
            if let Some(index) = w.back {
                p.give_back(tag, shape, c.cost, index);
                continue;
            }
            let at: i64 = match self.time {
                TimeSource::Caller => {
                    i64::try_from(w.at.as_nanos().div_ceil(1000)).unwrap_or(i64::MAX)
                }
                _ => -i64::try_from(w.queued.elapsed().as_micros()).unwrap_or(i64::MAX),
            };
            p.u(tag).u(shape).u(c.cost).i(at).i(-1);
        }
        for (g, shape) in give_back.iter().zip(back_shapes) {
            p.give_back(u64::from(g.limit.tag), shape as u64, g.units, g.index);
        }
        cmd.arg(p.0);
        let mut conn = conn.clone();
        let timeout = self.timeout;
        async move {
            tokio::time::timeout(timeout, async move {
                let answer = match cmd.query_async::<Vec<u8>>(&mut conn).await {
                    Err(e) if is_noscript(&e) => {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(SCRIPT)
                            .query_async::<String>(&mut conn)
                            .await?;
                        cmd.query_async::<Vec<u8>>(&mut conn).await
                    }
                    other => other,
                };
                answer.map(|bytes| doubles(&bytes))
            })
            .await
        }
    }

    /// Books a call's result: circuit state (of the cluster slot's group
    /// when `slot` is given, else of the whole store), and what becomes of
    /// the charges it carried.
    pub(super) fn finish_call(
        &self,
        res: CallResult,
        charges: Vec<QueuedCharge>,
        slot: Option<u16>,
    ) -> Result<Vec<i64>, StoreError> {
        // A cluster's nodes book their own calls (see `nodes`).
        let cluster = slot.is_some();
        let book = |ok: bool| match (cluster, ok) {
            (true, _) => {}
            (false, true) => self.succeeded(),
            (false, false) => self.failed(),
        };
        let backs = || -> u64 {
            charges
                .iter()
                .filter(|w| w.is_lease_unit())
                .map(|w| w.charge.cost)
                .sum()
        };
        match res {
            Ok(Ok(v)) => {
                book(true);
                self.leases.returned(backs());
                Ok(v)
            }
            Ok(Err(e)) => {
                book(false);
                if !cluster {
                    self.watch
                        .trouble(RedisProblem::of(&e), "running the script");
                }
                self.requeue(charges);
                Err(StoreError::new(StoreErrorKind::Unavailable, e))
            }
            Err(elapsed) => {
                book(false);
                if !cluster {
                    self.watch
                        .trouble(RedisProblem::TimedOut(self.timeout), "running the script");
                }
                self.leases.stranded(backs());
                self.uncertain
                    .fetch_add(charges.len() as u64, Ordering::Relaxed);
                Err(StoreError::new(StoreErrorKind::Timeout, elapsed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::doubles;

    #[test]
    fn answers_read_as_whole_numbers_and_a_torn_one_as_none() {
        let values = [
            0.0f64,
            1.0,
            1_793_512_780_000.0,
            9_007_199_254_740_991.0,
            -3.0,
        ];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            doubles(&bytes),
            vec![0, 1, 1_793_512_780_000, 9_007_199_254_740_991, -3]
        );
        assert!(doubles(&bytes[..bytes.len() - 1]).is_empty());
        assert_eq!(doubles(&f64::NAN.to_le_bytes()), vec![0]);
        assert_eq!(doubles(&f64::INFINITY.to_le_bytes()), vec![i64::MAX]);
    }
}
