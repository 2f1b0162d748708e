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


def lag_text(r):
    if r.get("records_never_caught_up"):
        return "**never (60 s)**"
    return f(r.get("records_lag_seconds"), 2)


failures = []
if len(sys.argv) > 5 and os.path.exists(sys.argv[5]):
    failures = [l.strip() for l in open(sys.argv[5]) if l.strip()]

env = {}
if len(sys.argv) > 4 and os.path.exists(sys.argv[4]):
    for line in open(sys.argv[4]):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            env[k] = v
else:
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
print("Defaults of `config/default.toml` unless listed: delivery `max_in_flight` 2048 (attempts "
      "in flight and the consumer prefetch), `max_in_flight_per_webhook` 8, `timeout` 10s, "
      "`record_batch_size` 500, `record_flush_interval` 50ms; fanout `chunk_size` 1000, "
      "`batch_size` 50 (first attempts per broker message), `prefetch` 4; database `pool_size` "
      "16 per process; RabbitMQ as Debian installs it; PostgreSQL an instance of the bench's own, "
      "made by initdb for the run with its defaults (autovacuum on: the machine's server runs with "
      "autovacuum off) but for the production overlay's `shared_buffers` 2GB and `max_connections` 300. "
      "Overrides in this run:\n")
for k in sorted(env):
    if "SECRET" in k or "URL" in k:
        continue
    print(f"- `{k}={env[k]}`")
print("\nThe receiver is `aioka-bench receiver`: HTTPS; every seeded webhook has its own signing "
      "secret, and the receiver verifies each delivery's `X-AIOKA-Signature` with the secret of the "
      "webhook it was addressed to (a delivery signed with another webhook's secret fails the run); "
      "it counts distinct delivery ids. *Warm* reuses connections (every webhook on one host, as when "
      "many share a host) to a receiver just started, so the burst itself opens as many connections as "
      "there are attempts in flight. *Connections open* repeats the warm burst moments later, with those "
      "connections still open: the condition under which Svix was measured at 13,800–17,200/s on this "
      "machine (issue 11). *Reconnect* closes every connection after one response, so each delivery "
      "opens a fresh TCP connection, and TLS resumes from a session ticket the receiver issued "
      "earlier: the steady state of a verdict every 5 minutes to hosts seen before. *First contact* "
      "closes every connection too, and the receiver issues no tickets and keeps no session cache, "
      "so every delivery pays a full TLS handshake: hosts never seen before.\n")
print("## Bursts: one `verdict.new` to N webhooks\n")
print("| case | delivered / expected | lost | dup | seconds from 202 to last | deliveries/s | records lag s | pending after | p50 / p99 ms |")
print("|---|---|---|---|---|---|---|---|---|")
for r in results:
    if not r["label"].startswith("burst"):
        continue
    lat = r.get("latency_ms") or {}
    print(f"| {r['label']} | {r['delivered']:,} / {r['expected']:,} | {r['lost']} | {r['duplicates']} | "
          f"{f(r['seconds'], 2)} | {f(r['per_second'], 0)} | {lag_text(r)} | {r.get('pending', '—')} | "
          f"{f(lat.get('p50'), 0)} / {f(lat.get('p99'), 0)} |")
print("\nIn the isolation case 5 % of endpoints never answer (each attempt ends at the 10 s timeout) "
      "and 10 % answer 500; *expected* counts the healthy 85 %. The full run repeats it with the "
      "same 15 % of endpoints all answering 500, then all hanging, to show which of the two costs "
      "the time.\n")
ordered = [r for r in results if r["label"].startswith("ordered")]
if ordered:
    print("## Ordered delivery: `\"ordering\": \"fifo\"` webhooks, one attempt in flight each\n")
    print("| case | delivered / expected | lost | dup | seconds from 202 to last | deliveries/s, all | deliveries/s per webhook | p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ordered:
        lat = r.get("latency_ms") or {}
        hooks = int(r["label"].split()[1])
        print(f"| {r['label']} | {r['delivered']:,} / {r['expected']:,} | {r['lost']} | {r['duplicates']} | "
              f"{f(r['seconds'], 2)} | {f(r['per_second'], 0)} | {f(r['per_second'] / hooks, 1)} | "
              f"{f(lat.get('p50'), 0)} / {f(lat.get('p99'), 0)} |")
    print("\nAn ordered webhook's own rate is what it costs: each delivery waits for the one before "
          "it to be answered and recorded, and for the turn to be handed on.\n")
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
print("\n## Where the time goes: CPU µs per delivery\n")
print("Each process's CPU seconds during the case divided by the deliveries that arrived.\n")
print("| case | " + " | ".join(names) + " | all |")
print("|---" * (len(names) + 2) + "|")
delivered = {r["label"]: r.get("delivered", 0) for r in results}
for label, groups in resources.items():
    n = delivered.get(label) or 0
    if not n:
        continue
    cells = [groups[x]["cpu_seconds"] * 1e6 / n if x in groups else None for x in names]
    total = sum(c for c in cells if c is not None)
    print(f"| {label} | " + " | ".join(f(c, 0) for c in cells) + f" | {f(total, 0)} |")

# Targets (the benchmark issue), judged on this run's figures.
def result(label):
    return next((r for r in results if r["label"] == label), None)


sizes = sorted({int(r["label"].split()[1]) for r in results if r["label"].startswith("burst") and r["label"].split()[1].isdigit()})
big = sizes[-1] if sizes else None
rows = []
if big:
    warm, hot, rec, first, iso = (result(f"burst {big} {k}") for k in ("warm", "connections open", "reconnect", "first contact", "isolation"))
    for name, r, goal in ((f"warm burst, {big:,} webhooks (connections opened during the burst)", warm, 12000),
                          (f"warm burst, {big:,} webhooks, connections already open (as Svix was measured)", hot, 12000),
                          (f"reconnect burst, {big:,}", rec, 3500),
                          (f"first-contact burst, {big:,}", first, 2000)):
        if r:
            rows.append((name, f"≥ {goal:,}/s", f"{r['per_second']:,.0f}/s ({r['seconds']:.1f} s)", r["per_second"] >= goal))
        else:
            rows.append((name, f"≥ {goal:,}/s", "not measured", False))
    if warm and iso:
        ratio = iso["seconds"] / warm["seconds"] if warm["seconds"] else float("inf")
        rows.append(("isolation: 5 % hanging + 10 % failing, healthy 85 % vs all healthy", "≤ 1.25×", f"{ratio:.2f}×", ratio <= 1.25))
rss = [g["delivery"]["peak_mb"] for g in resources.values() if "delivery" in g]
if rss:
    rows.append(("delivery process memory, worst case", "≤ 150 MB", f"{max(rss):.0f} MB", max(rss) <= 150))
healthy = [g["delivery"]["peak_mb"] for l, g in resources.items() if "delivery" in g and l.startswith("burst") and "isolation" not in l]
if healthy:
    rows.append(("delivery process memory, healthy bursts", "≤ 100 MB", f"{max(healthy):.0f} MB", max(healthy) <= 100))
s8 = result("sustained 8000/s warm")
if s8:
    rows.append(("sustained warm, kept up within 1 % (8,000/s offered)", "≥ 8,000/s", f"{s8['per_second']:,.0f}/s", s8["per_second"] >= 7920))
many = next((r for r in results if r["label"].startswith("many events")), None)
if many:
    rows.append((many["label"], "≥ 8,000/s", f"{many['per_second']:,.0f}/s ({many['seconds']:.1f} s)", many["per_second"] >= 8000))
s2 = result("sustained 2000/s warm")
if s2:
    p99 = s2["latency_ms"]["p99"]
    rows.append(("ingest-to-receipt p99 at 2,000/s", "≤ 150 ms", f"{p99:.0f} ms", p99 <= 150))
bursts = [r for r in results if "records_lag_seconds" in r]
if bursts:
    never = [r["label"] for r in bursts if r.get("records_never_caught_up")]
    lags = [r["records_lag_seconds"] for r in bursts if r.get("records_lag_seconds") is not None]
    got = ("never caught up: " + ", ".join(never)) if never else f"{max(lags):.2f} s"
    rows.append(("attempt records keep pace (worst burst)", "≤ 2 s after the last arrival", got, not never and bool(lags) and max(lags) <= 2))
print("\n## Targets\n")
print("| target | goal | this run | met |")
print("|---|---|---|---|")
for name, goal, got, ok in rows:
    print(f"| {name} | {goal} | {got} | {'yes' if ok else '**no**'} |")
print("\n## Run checks\n")
if failures:
    print("This run **failed**: " + "; ".join(failures) + ".")
else:
    print("Nothing lost, no bad signature, nothing parked, and no healthy case left a delivery "
          "pending.")
print("\nFindings written by hand, dated, are in [docs/bench-findings.md](docs/bench-findings.md); "
      "this file is generated and holds only this run's figures.")
