#!/usr/bin/env python3
"""BENCHMARKS-scale.md from scripts/bench-scale's results (one JSON line per configuration).

Every figure is computed from the run's own numbers; nothing here is fixed prose with old
figures in it.
"""
import json
import platform
import subprocess
import sys


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing tool only leaves a blank
        return ""


def main():
    results_path, webhooks = sys.argv[1], int(sys.argv[2])
    rows = [json.loads(line) for line in open(results_path) if line.strip()]
    out = []
    out.append("# Scaling out: one broker node against three, delivery sharded\n")
    out.append(
        "Produced by `scripts/bench-scale` (generated; do not edit). Each row: a fresh database, "
        f"{webhooks:,} webhooks on one HTTPS receiver, one warm-up burst, then the measured burst "
        "of one `verdict.new` to all of them. Everything runs on one machine, so three nodes share "
        "the same two cores as one: what matters is whether per-shard throughput and the cost of a "
        "delivery stay flat as shards and nodes are added.\n"
    )
    cpus = sh("nproc")
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    rabbit = sh("dpkg-query -W -f='${Version}' rabbitmq-server")
    postgres = sh("psql --version")
    out.append(f"Machine: {cpus} cores, {mem}, {platform.platform()}; RabbitMQ {rabbit}, {postgres}.\n")
    out.append("| configuration | delivered / expected | seconds | deliveries/s | broker CPU µs per delivery | "
               "PostgreSQL CPU µs | delivery CPU µs | fanout CPU µs | WAL bytes per delivery | "
               "log bytes on disk per delivery | tasks per shard (min–max) | per shard /s (min–max) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["burst"]
        n = max(b["delivered"], 1)
        res = r["resources"]
        us = lambda name: f"{res.get(name, {}).get('cpu_seconds', 0) * 1e6 / n:,.0f}"  # noqa: E731
        tasks = list(r["tasks"].values()) or [0]
        secs = max(b["seconds"], 1e-9)
        label = ("1 node" if r["mode"] == "single" else "3 nodes") + f", {r['shards']} shard(s)"
        out.append(
            f"| {label} | {b['delivered']:,} / {b['expected']:,} | {b['seconds']:.2f} | {b['per_second']:,.0f} | "
            f"{us('rabbitmq')} | {us('postgres')} | {us('delivery')} | {us('fanout')} | "
            f"{r['wal_bytes'] / n:,.0f} | {r['log_bytes'] / max(r['log_rows'], 1):,.0f} | {min(tasks):,}–{max(tasks):,} | "
            f"{min(tasks) / secs:,.0f}–{max(tasks) / secs:,.0f} |"
        )
    out.append("")
    out.append("CPU is user + system seconds of each process group during the measured burst, divided by "
               "the deliveries; the broker's is summed over its nodes. WAL bytes are PostgreSQL's "
               "`pg_stat_wal.wal_bytes` over the burst (every database on the server), and depend on where "
               "checkpoints fall (full-page writes), so they vary from row to row. "
               "Log bytes on disk: deliveries and attempts with their indexes, over the rows written by both bursts. "
               "Tasks per shard come from delivery's `aioka_delivery_tasks_total{routing_key}`.\n")
    loads = [r.get("load") for r in rows if r.get("load")]
    if loads:
        out.append("Load average (1 min) at the start of each row: " + ", ".join(loads) + ". Other work on the "
                   "machine shares the two cores and raises every CPU figure.\n")
    out.append("Shard leaders (3-node rows):\n")
    for r in rows:
        if r["mode"] == "cluster":
            leaders = ", ".join(f"`{q}` → {n.split('@')[0]}" for q, n in sorted((r["leaders"] or {}).items()))
            out.append(f"- {r['shards']} shard(s): {leaders or 'not read'}")
    out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
