#!/usr/bin/python3
"""Plots the adaptive concurrency limit (and the average round trip) of every destination
over time, from the JSON report of `scripts/bench.sh --json FILE`.

    /usr/bin/python3 scripts/plot_concurrency.py docs/bench-rt.json docs/adaptive-concurrency.png [SCENARIO]

SCENARIO defaults to `rt-slow` (the webhook slows from 100 ms to 2 s from 30% to 60%
of the load). Needs matplotlib (Debian: python3-matplotlib).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = sys.argv[1], sys.argv[2]
    wanted = sys.argv[3] if len(sys.argv) > 3 else "rt-slow"
    with open(source, encoding="utf-8") as f:
        report = json.load(f)
    scenario = next((s for s in report["scenarios"] if s["id"] == wanted), None)
    if scenario is None:
        print(f"no scenario {wanted!r} in {source}", file=sys.stderr)
        return 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for d in scenario["destinations"]:
        series = d.get("concurrency_series") or []
        if not series:
            continue
        t = [p[0] for p in series]
        top.step(t, [p[1] for p in series], where="post", label=d["name"])
        bottom.plot(t, [p[2] * 1000 for p in series], label=d["name"])
    load = scenario["load_seconds"]
    slow = scenario.get("slow_window_seconds")
    if slow:
        for ax in (top, bottom):
            ax.axvspan(slow[0], slow[1], color="grey", alpha=0.15, lw=0)
        top.text((slow[0] + slow[1]) / 2, top.get_ylim()[1] * 0.92,
                 "requests sent here\nare answered in 2 s", ha="center", va="top", fontsize=8)
    for ax in (top, bottom):
        ax.axvline(load, color="black", lw=0.8, ls=":")
    top.set_ylabel("concurrency limit\n(requests in flight)")
    bottom.set_ylabel("average round trip (ms)")
    bottom.set_xlabel("seconds since the load started (dotted: end of load)")
    top.set_title(f"{scenario['id']}: {scenario['title']}", fontsize=10)
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    fig.text(0.01, 0.01, report.get("machine", "")[:160], fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
