#!/usr/bin/env python3
"""Rows and the table of scripts/chaos.

  chaos-report.py row NAME ACCOUNT_JSON SECONDS FAILURES NOTES EVIDENCE
      prints one JSON line (appended to .run/chaos/results.jsonl by the caller).
      ACCOUNT_JSON is what `aioka-bench account` printed (sets accounted, may be missing);
      FAILURES is a '; '-separated list of failed checks (empty: none); EVIDENCE says where
      the fault landed ('; '-separated; empty: it did not, and the row fails).
  chaos-report.py table RESULTS_JSONL
      prints the aligned table; exits 1 if any row failed.
"""
import json
import sys

# Sets (and counts) that must be empty for a row to pass, with how a failure reads.
MUST_BE_EMPTY = [
    ("lost", "deliveries lost"),
    ("unexpected", "unexpected deliveries"),
    ("forks", "retry chains forked"),
    ("miscounted", "webhooks miscounted"),
    ("false_successes", "deliveries the log calls succeeded that no receiver answered 200"),
    ("unfinished", "deliveries not ended in the log"),
    ("bad_attempts", "deliveries with attempt numbers outside 1..max"),
    ("bad_signatures", "bad signatures"),
    ("duplicate_accepted", "event ids accepted twice"),
]


def row(argv):
    name, account_path, seconds, failures, notes, evidence = argv
    try:
        with open(account_path, encoding="utf-8") as f:
            text = f.read().strip()
        acc = json.loads(text.splitlines()[-1]) if text else {}
    except (OSError, ValueError, IndexError):
        acc = {}
    fails = [f for f in failures.split("; ") if f]
    if not acc:
        fails.append("no accounting (aioka-bench account did not run)")
    for key, what in MUST_BE_EMPTY:
        n = int(acc.get(key, 0))
        if n:
            sample = acc.get(f"{key}_sample") or []
            fails.append(f"{n} {what}" + (": " + ", ".join(sample) if sample else ""))
    if acc and not acc.get("accepted"):
        fails.append("no event accepted")
    # Landed: evidence recorded, and no part of the fault reported that it missed.
    landed = bool(evidence) and not any(f.startswith("fault did not land") for f in fails)
    if not evidence:
        fails.append("no evidence that the fault landed")
    # Unreached deliveries pass (the log ends them failed after transport failures only),
    # but the row says how many, and how many webhooks ended disabled: many of either means
    # the receiver was starved or stalled during the run.
    if acc.get("unreached"):
        kinds = ", ".join(f"{k} {v}" for k, v in sorted((acc.get("unreached_errors") or {}).items()))
        notes = (notes + " | " if notes else "") + (
            f"unreached {acc['unreached']} (never seen by the receiver; the log ends them failed "
            f"after transport failures: {kinds}; e.g. {', '.join(acc.get('unreached_sample') or [])})")
    if "disabled_webhooks" in acc:
        notes = (notes + " | " if notes else "") + f"webhooks disabled {acc['disabled_webhooks']} of {acc.get('webhooks', '?')}"
    print(json.dumps({
        "scenario": name,
        "accepted": int(acc.get("accepted", 0)),
        "webhooks": int(acc.get("webhooks", 0)),
        "expected": int(acc.get("expected", 0)),
        "skipped_disabled": int(acc.get("skipped_disabled", 0)),
        "delivered": int(acc.get("delivered", 0)),
        "requests": int(acc.get("requests", 0)),
        "lost": int(acc.get("lost", 0)),
        "unreached": int(acc.get("unreached", 0)),
        "unexpected": int(acc.get("unexpected", 0)),
        "duplicates": int(acc.get("duplicates", 0)),
        "forks": int(acc.get("forks", 0)),
        "miscounted": int(acc.get("miscounted", 0)),
        "unfinished": int(acc.get("unfinished", 0)),
        "bad_signatures": int(acc.get("bad_signatures", 0)),
        "landed": landed,
        "evidence": evidence,
        "account": acc,
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
    head = ["scenario", "accepted", "expected", "delivered", "dups", "lost", "unexpected",
            "forks", "miscounted", "landed", "secs", "result"]
    body = []
    for r in rows:
        body.append([
            r["scenario"], str(r["accepted"]), str(r["expected"]), str(r["delivered"]),
            str(r["duplicates"]), str(r["lost"]), str(r["unexpected"]), str(r["forks"]),
            str(r["miscounted"]), "yes" if r["landed"] else "NO", f'{r["seconds"]:.0f}',
            "ok" if r["ok"] else "FAIL",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    numeric = set(range(1, 9)) | {10}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(fmt(head))
    print(fmt(["-" * w for w in widths]))
    for cells in body:
        print(fmt(cells))
    print()
    print("fault evidence:")
    for r in rows:
        print(f'  {r["scenario"]}: {r["evidence"] or "NONE"}')
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
