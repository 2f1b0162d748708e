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
print("Defaults of `config/default.toml` unless listed: delivery `max_in_flight` 2048 (the "
      "consumer prefetch), `max_in_flight_per_webhook` 8, `timeout` 10s, `record_batch_size` 500, "
      "`record_flush_interval` 50ms; fanout `chunk_size` 1000, `prefetch` 4; database `pool_size` "
      "16 per process; RabbitMQ and PostgreSQL as Debian installs them. Overrides in this run:\n")
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
      "and 10 % answer 500; *expected* counts the healthy 85 %. The full run repeats it with the "
      "same 15 % of endpoints all answering 500, then all hanging, to show which of the two costs "
      "the time.\n")
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

# Targets (the benchmark issue), judged on this run's figures.
def result(label):
    return next((r for r in results if r["label"] == label), None)


sizes = sorted({int(r["label"].split()[1]) for r in results if r["label"].startswith("burst")})
big = sizes[-1] if sizes else None
rows = []
if big:
    warm, cold, iso = result(f"burst {big} warm"), result(f"burst {big} cold"), result(f"burst {big} isolation")
    if warm:
        rows.append((f"warm burst of {big:,}", "≤ 20 s (≥ 5,000/s)" if big == 100000 else "≥ 5,000/s",
                     f"{warm['seconds']:.1f} s ({warm['per_second']:,.0f}/s)", warm["per_second"] >= 5000))
    if cold:
        rows.append((f"cold burst of {big:,}", "≤ 40 s (≥ 2,500/s)" if big == 100000 else "≥ 2,500/s",
                     f"{cold['seconds']:.1f} s ({cold['per_second']:,.0f}/s)", cold["per_second"] >= 2500))
    if warm and iso:
        ratio = iso["seconds"] / warm["seconds"] if warm["seconds"] else float("inf")
        rows.append(("isolation: healthy 85 % vs all healthy", "≤ 1.25×", f"{ratio:.2f}×", ratio <= 1.25))
s5 = result("sustained 5000/s warm")
if s5:
    rows.append(("sustained, warm (5,000/s offered; kept up within 1 %)", "≥ 5,000/s", f"{s5['per_second']:,.0f}/s", s5["per_second"] >= 4950))
s2 = result("sustained 2000/s warm")
if s2:
    p99 = s2["latency_ms"]["p99"]
    rows.append(("ingest-to-receipt p99 at 2,000/s", "≤ 250 ms", f"{p99:.0f} ms", p99 <= 250))
lags = [r.get("records_lag_seconds") for r in results if r.get("records_lag_seconds") is not None]
if lags:
    rows.append(("attempt records keep pace (worst burst)", "≤ 2 s after the last arrival", f"{max(lags):.2f} s", max(lags) <= 2))
rss = [g["delivery"]["peak_mb"] for g in resources.values() if "delivery" in g]
if rss:
    rows.append(("delivery memory at full load (worst case)", "≤ 200 MB", f"{max(rss):.0f} MB", max(rss) <= 200))
fan = {int(l.split()[1]): g["fanout"]["peak_mb"] for l, g in resources.items() if l.startswith("burst") and "fanout" in g and "warm" in l}
if len(fan) > 1:
    lo, hi = min(fan), max(fan)
    rows.append((f"fan-out memory, {lo:,} → {hi:,} subscribers", "flat", f"{fan[lo]:.0f} → {fan[hi]:.0f} MB", fan[hi] <= fan[lo] * 1.5))
print("\n## Targets\n")
print("| target | goal | this run | met |")
print("|---|---|---|---|")
for name, goal, got, ok in rows:
    print(f"| {name} | {goal} | {got} | {'yes' if ok else '**no**'} |")
notes = os.path.join(os.path.dirname(__file__), "bench-findings.md")
if os.path.exists(notes):
    print()
    print(open(notes).read().rstrip())
