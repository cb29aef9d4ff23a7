#!/usr/bin/env python3
"""Syscalls and files made per child, by process role, from two `strace -ff` runs.

usage: scripts/strace-per-child.py SMALL_DIR SMALL_N BIG_DIR BIG_N

Each DIR holds the per-thread files of
    strace -ff -o DIR/t baton bench --workload proc --agents 1 --children N ...
(one file `t.TID` per thread). Threads are grouped into processes by following
clone/clone3/fork/vfork results (CLONE_THREAD: same process), and each process gets
a role from its last execve: `coordinator` (the `baton bench` process: the embedded
coordinator and its thin client), `agent`, `watchdog`, `job` (/bin/true), `xargs`
(the baseline and its own /bin/true children), `other`. Counts are
per child as (BIG - SMALL) / (BIG_N - SMALL_N), so start-up and shut-down cancel
out. `made` counts the calls that make or remove a name in the file system
(`openat(O_CREAT)` also when the file was there), `failed` those that failed.
"""
import collections
import os
import re
import sys

CLONE_RE = re.compile(r"^(clone3?|vfork|fork)\(")
RESULT_RE = re.compile(r"= (\d+)(?: <[\d.]+>)?$")
RESUMED_RE = re.compile(r"^<\.\.\. (\w+) resumed>")
CALL_RE = re.compile(r"^(\w+)\(")
EXECVE_RE = re.compile(r'^execve\("([^"]*)", \[([^\]]*)\]')
MAKES = {"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat",
         "rmdir", "link", "linkat", "symlink", "symlinkat"}


def role_of(path, argv):
    args = re.findall(r'"((?:[^"\\]|\\.)*)"', argv)
    if path.endswith("/true"):
        return "job"
    if path.endswith("xargs"):
        return "xargs"
    if len(args) > 1 and args[1] == "agent":
        return "agent"
    if len(args) > 1 and args[1] == "agent-watchdog":
        return "watchdog"
    if len(args) > 1 and args[1] == "bench":
        return "coordinator"
    return "other"


def parse(dirname):
    calls = {}      # tid -> Counter of syscall names (completed or started)
    made = {}       # tid -> Counter of name-making syscalls that succeeded
    parent = {}     # tid -> (creator tid, is_thread)
    execs = {}      # tid -> role from its last successful execve
    for name in os.listdir(dirname):
        if not name.startswith("t."):
            continue
        tid = int(name.split(".")[1])
        c = collections.Counter()
        m = collections.Counter()
        pending = {}
        with open(os.path.join(dirname, name), errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                resumed = RESUMED_RE.match(line)
                if resumed:
                    call = resumed.group(1)
                    head = pending.pop(call, "")
                    text = head + line
                else:
                    mc = CALL_RE.match(line)
                    if not mc:
                        continue
                    call = mc.group(1)
                    c[call] += 1
                    if line.endswith("<unfinished ...>"):
                        pending[call] = line
                        continue
                    text = line
                ok = RESULT_RE.search(text)
                if CLONE_RE.match(text) and ok:
                    child = int(ok.group(1))
                    parent[child] = (tid, "CLONE_THREAD" in text)
                elif call in MAKES:
                    m[call if ok else call + " (failed)"] += 1
                elif call in ("openat", "open") and "O_CREAT" in text:
                    m["openat(O_CREAT)" if ok else "openat(O_CREAT) (failed)"] += 1
                elif call == "execve" and ok:
                    e = EXECVE_RE.match(text)
                    if e:
                        execs[tid] = role_of(e.group(1), e.group(2))
        calls[tid] = c
        made[tid] = m

    def leader(tid):
        while tid in parent and parent[tid][1]:
            tid = parent[tid][0]
        return tid

    def role(tid):
        lead = leader(tid)
        if lead in execs:
            r = execs[lead]
            # The baseline's own /bin/true processes count as xargs's.
            if r == "job" and lead in parent and role(parent[lead][0]) == "xargs":
                return "xargs"
            return r
        # A process that never exec'd (a fork of its creator before exec).
        if lead in parent:
            return role(parent[lead][0])
        return "other"

    per_role = collections.defaultdict(collections.Counter)
    made_role = collections.defaultdict(collections.Counter)
    procs = collections.defaultdict(set)
    for tid in calls:
        r = role(tid)
        per_role[r].update(calls[tid])
        made_role[r].update(made[tid])
        procs[r].add(leader(tid))
    return per_role, made_role, procs


def main():
    small_dir, small_n, big_dir, big_n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    small, small_made, small_procs = parse(small_dir)
    big, big_made, big_procs = parse(big_dir)
    n = big_n - small_n
    for r in sorted(set(big) | set(small)):
        diff = big[r].copy()
        diff.subtract(small[r])
        total = sum(diff.values()) / n
        print(f"== {r}: {total:.1f} syscalls per child "
              f"(processes: {len(small_procs[r])} / {len(big_procs[r])})")
        for call, k in sorted(diff.items(), key=lambda kv: -kv[1]):
            if k / n >= 0.05:
                print(f"   {call:<20} {k / n:7.2f}")
        md = big_made[r].copy()
        md.subtract(small_made[r])
        shown = {k: v / n for k, v in md.items() if v / n >= 0.01}
        if shown:
            print("   made/removed names: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(shown.items())))


if __name__ == "__main__":
    main()
