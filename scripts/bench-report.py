#!/usr/bin/env python3
"""Turns scripts/bench's JSON lines into BENCHMARKS.md (printed to stdout)."""
import json
import os
import platform
import subprocess
import sys

results_path, resources_path, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
results = [json.loads(l) for l in open(results_path) if l.strip()]
resources = {}
for line in open(resources_path):
    if line.strip():
        r = json.loads(line)
        resources[r["label"]] = r["resources"]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_gib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return "?"


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def f(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


env = {k: v for k, v in os.environ.items() if k.startswith("AIOKA__")}
print("# Benchmarks\n")
print("Produced by `scripts/bench" + (" --quick" if quick else "") + "` (see the script and "
      "`crates/bench`). Everything runs on one machine: RabbitMQ, PostgreSQL, the three services, "
      "and the receiver that counts. A run that loses a delivery fails instead of reporting.\n")
print("## Machine\n")
print(f"- {os.cpu_count()} cores ({cpu_model()}), {mem_gib()} GiB memory, {platform.system()} {platform.release()}")
print(f"- {version(['rabbitmqctl', 'version'])} (RabbitMQ), {version(['psql', '--version'])}")
print(f"- {version(['rustc', '--version'])}, release build\n")
print("## Settings that matter\n")
print("Defaults of `config/default.toml` unless listed: delivery `max_in_flight` 256, "
      "`max_in_flight_per_webhook` 8, `record_batch_size` 500, `record_flush_interval` 50ms, "
      "fanout `chunk_size` 1000, `prefetch` 4, database `pool_size` 16 per process. Overrides in this run:\n")
for k in sorted(env):
    if "SECRET" in k or "URL" in k:
        continue
    print(f"- `{k}={env[k]}`")
print("\nThe receiver is `aioka-bench receiver`: HTTPS, verifies every `X-AIOKA-Signature`, counts "
      "distinct delivery ids. *Warm* reuses connections (every webhook on one host, as when many "
      "share a host); *cold* closes every connection after one response, so each delivery pays a "
      "fresh TCP and TLS handshake (every subscriber a distinct host).\n")
print("## Bursts: one `verdict.new` to N webhooks\n")
print("| case | delivered / expected | lost | dup | seconds from 202 to last | deliveries/s | records lag s | p50 / p99 ms |")
print("|---|---|---|---|---|---|---|---|")
for r in results:
    if not r["label"].startswith("burst"):
        continue
    lat = r.get("latency_ms") or {}
    print(f"| {r['label']} | {r['delivered']:,} / {r['expected']:,} | {r['lost']} | {r['duplicates']} | "
          f"{f(r['seconds'], 2)} | {f(r['per_second'], 0)} | {f(r.get('records_lag_seconds'), 2)} | "
          f"{f(lat.get('p50'), 0)} / {f(lat.get('p99'), 0)} |")
print("\nIn the isolation case 5 % of endpoints never answer (each attempt ends at the 10 s timeout) "
      "and 10 % answer 500; *expected* counts the healthy 85 %.\n")
print("## Sustained: a steady event rate × 1 000 subscribers\n")
print("| case | events | delivered / expected | lost | deliveries/s | ingest-to-receipt p50 / p95 / p99 ms | deepest backlog |")
print("|---|---|---|---|---|---|---|")
for r in results:
    if not r["label"].startswith("sustained"):
        continue
    lat = r.get("latency_ms") or {}
    print(f"| {r['label']} | {r['events']} | {r['delivered']:,} / {r['expected']:,} | {r['lost']} | "
          f"{f(r['per_second'], 0)} | {f(lat.get('p50'), 0)} / {f(lat.get('p95'), 0)} / {f(lat.get('p99'), 0)} | "
          f"{r['deepest_backlog']:,} |")
print("\n## Resources during each case\n")
names = ["gateway", "fanout", "delivery", "receiver", "rabbitmq", "postgres"]
print("| case | " + " | ".join(f"{n} peak MB / CPU s" for n in names) + " |")
print("|---" * (len(names) + 1) + "|")
for label, groups in resources.items():
    cells = []
    for n in names:
        g = groups.get(n)
        cells.append("—" if g is None else f"{g['peak_mb']:.0f} / {g['cpu_seconds']:.1f}")
    print(f"| {label} | " + " | ".join(cells) + " |")
print("\nMemory is PSS (shared pages split between the processes sharing them); CPU is user + "
      "system seconds spent during the case.")
