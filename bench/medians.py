#!/usr/bin/env python3
"""Medians of bench/run.sh result lines.

A result line is `<name words> key=value ...`; lines with the same name words and the same
non-numeric key=value pairs (e.g. `instances=4`, `clients=1`) describe one figure, and each
numeric field gets its median over the rounds. Lines starting with `#` are ignored.
"""
import statistics
import sys


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def main(path):
    figures = {}
    order = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = line.split()
            name = tuple(w for w in words if "=" not in w)
            # decisions= (counts by verdict) describes a round; it is not a figure.
            fields = [w.split("=", 1) for w in words
                      if "=" in w and not w.startswith("decisions=")]
            ident = name + tuple(f"{k}={v}" for k, v in fields
                                 if k in ("instances", "lanes", "clients", "agents", "jobs", "bound")
                                 or not is_number(v))
            values = figures.setdefault(ident, {})
            if ident not in order:
                order.append(ident)
            for k, v in fields:
                try:
                    values.setdefault(k, []).append(float(v))
                except ValueError:
                    pass
    for ident in order:
        parts = []
        rounds = 0
        for k, vs in figures[ident].items():
            if f"{k}=" in " ".join(ident) or not vs:
                continue
            m = statistics.median(vs)
            text = f"{m:.0f}" if m >= 100 else f"{m:.3g}"
            parts.append(f"{k}={text}")
            rounds = max(rounds, len(vs))
        print(" ".join(ident), " ".join(parts), f"(n={rounds})")


if __name__ == "__main__":
    main(sys.argv[1])
