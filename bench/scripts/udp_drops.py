#!/usr/bin/env python3
"""Which sockets overflow during a benchmark: runs the command given, samples every 0.5 s the
`drops` column of /proc/net/udp and /proc/net/udp6 per socket, maps each socket to the process
that holds it (its `comm`: `signaling`/`sfu` for the server, `bench` for the generator and the
simulated receivers), and prints the drops by process, with the kernel's UDP `RcvbufErrors`
and `InErrors` over the run. Run as root (other processes' descriptors).

    python3 bench/scripts/udp_drops.py target/release/bench run --target ours --scenario visits \
        --meetings 120 --duration 30 --workers 1 --quiet --json out.json
"""
import collections
import os
import subprocess
import sys
import time

def inode_owner():
    owner = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            comm = open(f'/proc/{pid}/comm').read().strip()
            for fd in os.listdir(f'/proc/{pid}/fd'):
                try:
                    link = os.readlink(f'/proc/{pid}/fd/{fd}')
                except OSError:
                    continue
                if link.startswith('socket:['):
                    owner[link[8:-1]] = f'{comm}'
        except OSError:
            pass
    return owner

def drops():
    out = {}
    for f in ('/proc/net/udp', '/proc/net/udp6'):
        for line in open(f).read().splitlines()[1:]:
            parts = line.split()
            out[parts[9]] = (parts[1], int(parts[-1]))
    return out

def snmp():
    lines = [l.split() for l in open('/proc/net/snmp') if l.startswith('Udp:')]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))

before_s = snmp()
# Drops a socket had before the run are not the run's.
already = {inode: d for inode, (_, d) in drops().items()}
proc = subprocess.Popen(sys.argv[1:])
peak = collections.Counter()
started = time.monotonic()
while proc.poll() is None:
    owner = inode_owner()
    for inode, (addr, d) in drops().items():
        key = (owner.get(inode, '?'), inode)
        now = d - already.get(inode, 0)
        if now > peak[key]:
            # When in the run they happened (the harness's joins come first, then the measured part).
            print(f'{time.monotonic() - started:6.1f} s: {key[0]} socket {addr} dropped {now - peak[key]}',
                  file=sys.stderr)
            peak[key] = now
    time.sleep(0.5)
after_s = snmp()
by = collections.Counter()
for (comm, inode), d in peak.items():
    by[comm] += d
print('drops by process (max seen per socket, summed):', dict(by))
print('kernel Udp RcvbufErrors +', after_s['RcvbufErrors'] - before_s['RcvbufErrors'],
      ' InErrors +', after_s['InErrors'] - before_s['InErrors'])
