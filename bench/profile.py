#!/usr/bin/env python3
"""Where task-service spends its CPU on the list, get, create and update paths (issue #14).

    bench/profile.py [OUT_DIR]        # from the repository, after `cargo build --release -p bench`

Runs `bench all --quick` and, while each of those four scenarios loads the real task-service,
records that process with `perf record` (999 Hz, no call graph: release builds keep their symbol
table but no debug info, so each sample is charged to the function it was in, after inlining).
A scenario's window opens when the line before it is printed (the floor's CreateTask line, then
each scenario's own) and closes when its own line is printed; its pgbench comparison runs inside
the window with the service idle, so it adds no samples. Writes OUT_DIR/<scenario>.data and prints
the share of each binary and the top 25 symbols of each (`perf report --no-children`). Needs `perf` (Debian:
linux-perf) and root or kernel.perf_event_paranoid <= 1. The bench's other output goes to
OUT_DIR/bench.out; the run takes as long as `bench all --quick`.
"""
import json
import os
import signal
import subprocess
import sys
import time

TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/task-service-profile"
# The line whose printing opens each scenario's window.
OPENS = {("floor", "CreateTask"): "list", ("list", None): "get", ("get", None): "create", ("create", None): "update"}


def task_service_pid():
    found = subprocess.run(["pgrep", "-f", f"{TARGET}/release/task-service"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    if len(pids) != 1:
        raise SystemExit(f"expected one task-service process, found {pids}")
    return pids[0]


def top(data, sort, rows):
    out = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio", "--percent-limit", "0.5"],
        capture_output=True,
        text=True,
    ).stdout
    lines = [line.rstrip()[:140] for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join(lines[:rows])


def report(data):
    """The share of each binary (the kernel: system calls, scheduling), then the top symbols."""
    return top(data, "dso", 6) + "\n" + top(data, "dso,symbol", 25)


def main():
    os.makedirs(OUT, exist_ok=True)
    bench = subprocess.Popen([f"{TARGET}/release/bench", "all", "--quick"], stdout=subprocess.PIPE, text=True)
    log = open(os.path.join(OUT, "bench.out"), "w")
    recording, done = None, []
    for line in bench.stdout:
        log.write(line)
        log.flush()
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        scenario = fields.get("scenario")
        if recording and scenario == recording[0]:
            recording[1].send_signal(signal.SIGINT)
            recording[1].wait()
            done.append(recording[0])
            recording = None
        key = (scenario, fields.get("rpc"))
        if key in OPENS:
            name = OPENS[key]
            data = os.path.join(OUT, f"{name}.data")
            perf = subprocess.Popen(
                ["perf", "record", "-F", "999", "-p", str(task_service_pid()), "-o", data],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.2)
            recording = (name, perf)
    # The bench runs to its end, which stops its services and its PostgreSQL.
    bench.wait()
    for name in done:
        print(f"== {name}")
        print(report(os.path.join(OUT, f"{name}.data")))


if __name__ == "__main__":
    main()
