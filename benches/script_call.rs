//! What a script call costs the calling process before it reaches the
//! wire, built the two ways redis-rs allows, for the argument layout the
//! Redis store sends (a key and six numbers a limit, after a small
//! header):
//!
//! - `cmd`: one `EVALSHA` command sized once, keys written through one
//!   buffer (what `store/redis/script.rs` does);
//! - `script_api`: redis-rs's `Script::prepare_invoke`, `.key()` and
//!   `.arg()`, then `invoke_async` (which also loads the script again by
//!   itself after a `NOSCRIPT`).
//!
//! Both are sent to a connection that answers at once without any I/O, so
//! the difference is building and encoding the call. Sizes: one decision
//! of one limit, and a full group of 64 decisions of two limits (what
//! concurrent decisions share under load).
//!
//! `cargo bench --bench script_call --features redis`

use std::fmt::Write as _;

use criterion::{BatchSize, Criterion};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection that answers every command at once with a bulk string,
/// without I/O (it only encodes the command, as a real one would).
struct Instant;

impl ConnectionLike for Instant {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let packed = cmd.get_packed_command();
        Box::pin(async move {
            std::hint::black_box(packed);
            Ok(Value::BulkString(vec![0u8; 8]))
        })
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        _: &'a Pipeline,
        _: usize,
        _: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn get_db(&self) -> i64 {
        0
    }
}

const PREFIX: &str = "tierlimit";

fn numbers(i: usize) -> [u64; 6] {
    [1, 2, 60_000 + i as u64, 1, 1, 0]
}

fn by_cmd(script: &redis::Script, limits: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(8 + 7 * limits, 128 + limits * (PREFIX.len() + 36 + 72));
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(limits);
    let mut key = String::with_capacity(PREFIX.len() + 36);
    for i in 0..limits {
        key.clear();
        let _ = write!(key, "{PREFIX}:{{{:032x}}}", i as u128 * 7919);
        cmd.arg(key.as_bytes());
    }
    cmd.arg("").arg("").arg(1).arg(0).arg(1);
    for i in 0..limits {
        for n in numbers(i) {
            cmd.arg(n);
        }
    }
    cmd
}

async fn by_script_api(script: &redis::Script, limits: usize, conn: &mut Instant) -> Vec<u8> {
    let mut call = script.prepare_invoke();
    for i in 0..limits {
        call.key(format!("{PREFIX}:{{{:032x}}}", i as u128 * 7919));
    }
    call.arg("").arg("").arg(1).arg(0).arg(1);
    for i in 0..limits {
        for n in numbers(i) {
            call.arg(n);
        }
    }
    call.invoke_async(conn).await.unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let script = redis::Script::new("return 1");
    for (name, limits) in [("one decision", 1), ("64 decisions x 2 limits", 128)] {
        let mut g = c.benchmark_group(name);
        g.bench_function("cmd", |b| {
            b.iter_batched(
                || Instant,
                |mut conn| {
                    rt.block_on(async {
                        let cmd = by_cmd(&script, limits);
                        cmd.query_async::<Vec<u8>>(&mut conn).await.unwrap()
                    })
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("script_api", |b| {
            b.iter_batched(
                || Instant,
                |mut conn| rt.block_on(by_script_api(&script, limits, &mut conn)),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
