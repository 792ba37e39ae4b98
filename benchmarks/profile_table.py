"""Summarizes Chrome traces of the profiler by operator, side by side.

Self time of an event is its duration less that of the events directly
nested in it on the same thread. Operators are ranked by the self time
summed over the first trace.

    python benchmarks/profile_table.py cpp.json python.json
"""

import json
import sys
from collections import defaultdict


def self_times(path):
    with open(path) as trace_file:
        events = json.load(trace_file)["traceEvents"]
    totals = defaultdict(float)
    calls = defaultdict(int)
    by_thread = defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and event.get("cat") == "cpu_op":
            by_thread[(event["pid"], event["tid"])].append(event)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for event in thread_events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= event["ts"]:
                stack.pop()
            if stack:
                totals[stack[-1]["name"]] -= event["dur"]
            totals[event["name"]] += event["dur"]
            calls[event["name"]] += 1
            stack.append(event)
    return totals, calls


def main():
    paths = sys.argv[1:]
    tables = [self_times(path) for path in paths]
    first_totals = tables[0][0]
    names = sorted(first_totals, key=lambda n: -first_totals[n])[:25]
    header = "| operator |" + "".join(
        f" {path} ms | calls |" for path in paths)
    print(header)
    print("|---|" + "---|---|" * len(paths))
    for name in names:
        cells = "".join(f" {totals.get(name, 0.0) / 1000:.1f} | "
                        f"{calls.get(name, 0)} |" for totals, calls in tables)
        print(f"| {name} |{cells}")
    print("| total |" + "".join(
        f" {sum(totals.values()) / 1000:.1f} | |" for totals, _ in tables))


if __name__ == "__main__":
    main()
