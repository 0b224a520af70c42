#!/usr/bin/env python3
"""Splits the machine's CPU of one `shopflow bench e2e` run between the shop, PostgreSQL and the broker.

    python3 docs/bench/cpu-split.py N [bench e2e flags...]

runs `shopflow bench e2e --orders N --latency-orders 0 --json <flags>` (the binary: $BIN, default
target/release/shopflow; the run's files under $BENCH_DIR, default /tmp) and prints the CPU seconds
each part used during it:
- the shop: the bench process's user and system time, from /usr/bin/time;
- PostgreSQL: every `postgres` process, plus the postmaster's reaped children (backends that ended);
- the broker: every `tansu` process;
- the machine: busy time from /proc/stat.

Run it for two sizes (say 1,000 and 3,000) and divide the difference by the difference of orders:
that is the cost per order, with setup cancelled out (docs/BENCHMARKS.md, issue 13).
"""
import os, sys, subprocess, time
HZ = os.sysconf('SC_CLK_TCK')
def proc_cpu(pid, children=False):
    try:
        f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
        v = int(f[11]) + int(f[12])
        if children: v += int(f[13]) + int(f[14])
        return v / HZ
    except FileNotFoundError:
        return 0.0
def pids(name):
    out = subprocess.run(['pgrep', '-x', name], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]
def pg():
    ps = pids('postgres')
    if not ps:
        return 0.0
    master = min(ps)  # the postmaster is the oldest
    return sum(proc_cpu(p) for p in ps if p != master) + proc_cpu(master, True)
def tansu():
    return sum(proc_cpu(p) for p in pids('tansu'))
def machine():
    f = open('/proc/stat').readline().split()[1:]
    v = [int(x) for x in f]
    return (sum(v) - v[3] - v[4]) / HZ  # busy: all but idle and iowait
n = sys.argv[1]; bin_ = os.environ.get('BIN', 'target/release/shopflow')
args = [bin_, 'bench', 'e2e', '--orders', n, '--latency-orders', '0', '--dir', os.environ.get('BENCH_DIR', '/tmp'), '--json'] + sys.argv[2:]
a = (machine(), pg(), tansu()); t0 = time.time()
r = subprocess.run(['/usr/bin/time', '-f', 'SHOPCPU %U %S'] + args, capture_output=True, text=True)
t1 = time.time(); b = (machine(), pg(), tansu())
shop = sum(float(x) for l in r.stderr.splitlines() if l.startswith('SHOPCPU') for x in l.split()[1:])
comp = [l for l in r.stdout.splitlines() if '"completed"' in l]
print(f'orders={n} wall={t1-t0:.1f}s machine={b[0]-a[0]:.2f}s shop={shop:.2f}s postgres={b[1]-a[1]:.2f}s broker={b[2]-a[2]:.2f}s other={(b[0]-a[0])-shop-(b[1]-a[1])-(b[2]-a[2]):.2f}s', comp[:1])
