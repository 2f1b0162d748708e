#!/usr/bin/env python3
"""Rows and the table of scripts/chaos.

  chaos-report.py row NAME ACCEPTED WEBHOOKS WAIT_JSON SECONDS FAILURES NOTES
      prints one JSON line (appended to .run/chaos/results.jsonl by the caller).
      WAIT_JSON is the receiver's counters as `aioka-bench wait` printed them (may be empty);
      FAILURES is a '; '-separated list of failed checks (empty: none).
  chaos-report.py table RESULTS_JSONL
      prints the aligned table; exits 1 if any row lost deliveries or failed a check.
"""
import json
import sys


def row(argv):
    name, accepted, webhooks, wait_path, seconds, failures, notes = argv
    try:
        with open(wait_path, encoding="utf-8") as f:
            text = f.read().strip()
        # `aioka-bench wait` prints the counters as one JSON object (the last line).
        stats = json.loads(text.splitlines()[-1]) if text else {}
    except (OSError, ValueError, IndexError):
        stats = {}
    accepted_n = int(accepted) if accepted.isdigit() else 0
    expected = accepted_n * int(webhooks)
    delivered = int(stats.get("distinct", 0))
    duplicates = int(stats.get("duplicates", 0))
    bad = int(stats.get("bad_signatures", 0))
    lost = max(0, expected - delivered)
    fails = [f for f in failures.split("; ") if f]
    if not stats:
        fails.append("no receiver counters")
    if lost:
        fails.append(f"{lost} deliveries lost")
    if bad:
        fails.append(f"{bad} bad signatures")
    if delivered > expected:
        notes = (notes + "; " if notes else "") + f"{delivered - expected} deliveries beyond accepted x webhooks"
    print(json.dumps({
        "scenario": name,
        "accepted": accepted_n,
        "webhooks": int(webhooks),
        "expected": expected,
        "delivered": delivered,
        "duplicates": duplicates,
        "lost": lost,
        "requests": int(stats.get("requests", 0)),
        "bad_signatures": bad,
        "seconds": float(seconds),
        "ok": not fails,
        "failures": fails,
        "notes": notes,
    }))


def table(argv):
    (path,) = argv
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    head = ["scenario", "accepted", "expected", "delivered", "duplicates", "lost", "secs", "result"]
    body = []
    for r in rows:
        body.append([
            r["scenario"], str(r["accepted"]), str(r["expected"]), str(r["delivered"]),
            str(r["duplicates"]), str(r["lost"]), f'{r["seconds"]:.0f}',
            "ok" if r["ok"] else "FAIL",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    numeric = {1, 2, 3, 4, 5, 6}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(fmt(head))
    print(fmt(["-" * w for w in widths]))
    for cells in body:
        print(fmt(cells))
    print()
    print("notes:")
    for r in rows:
        text = r["notes"] or "-"
        if r["failures"]:
            text += " | FAILED: " + "; ".join(r["failures"])
        print(f'  {r["scenario"]}: {text}')
    failed = [r["scenario"] for r in rows if not r["ok"]]
    if not rows:
        print("no scenario ran")
        return 1
    return 1 if failed else 0


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "row":
        row(argv)
    elif cmd == "table":
        sys.exit(table(argv))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
