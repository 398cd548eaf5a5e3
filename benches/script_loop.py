#!/usr/bin/env python3
"""The Redis script's own cost per decision, measured inside Redis.

Runs the body of `src/store/redis/script.lua` (or the file given) 2 000
times in a loop inside one `EVAL` on a redis-server of its own (free
loopback port, stopped at the end): each round decides 10 requests of two
sliding limits (60/min and 1000/h shapes, capacities raised so nothing is
refused) for callers among 1 000 keys, with real `HGETALL`/`HSET`, on a
clock that moves 1 ms a round; the loop is timed with `TIME`. No client,
no network: five repeats agree within about 1 %, so two versions of the
script can be compared one after the other.

    pip install redis    # the Python client, once
    python3 benches/script_loop.py [script.lua] [rounds]
"""
import socket
import struct
import subprocess
import sys
import time

import redis

ROUNDS_DEFAULT = 2000
R = 10  # decisions a round


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "src/store/redis/script.lua"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS_DEFAULT
    body = open(path).read()
    wrapped = """
local function now() local x = redis.call('TIME'); return x[1] * 1e6 + x[2] end
local rounds, all, P, start = tonumber(ARGV[3]), KEYS, ARGV[2], tonumber(ARGV[1])
local function body(KEYS, ARGV)
""" + body + """
end
local t0 = now()
for it = 1, rounds do
  local ks = {}
  for j = 1, """ + str(R) + """ do ks[j] = all[((it * """ + str(R) + """ + j) % #all) + 1] end
  body(ks, {tostring(start + it), tostring(start + it), P})
end
return tostring((now() - t0) / rounds / """ + str(R) + """)
"""
    # The packed numbers of a call (see the script's header): R requests of
    # two limits, two shapes, no post-charges, no leases, R keys.
    v = [R, 0, 2, 0, R] + [2] * R
    v += [2000, 29, 0, 60000, -1, -1, 120000, 29, 0, 3600000, -1, -1]
    for k in range(R):
        v += [1, 1, 60_000_000, 1, 1, 0, 0, k + 1]
        v += [2, 2, 1_000_000_000, 1, 1, 0, 0, k + 1]
    packed = struct.pack("<%dd" % len(v), *v)
    keys = ["loop:{%d}" % i for i in range(1000)]
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        results = [
            float(r.eval(wrapped, len(keys), *keys, 1_800_000_000_000, packed, rounds))
            for _ in range(5)
        ]
    finally:
        server.terminate()
        server.wait()
    print(f"{path}: " + " ".join(f"{x:.2f}" for x in results) + " us per decision (5 repeats)")


if __name__ == "__main__":
    main()
