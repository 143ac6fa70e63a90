#!/usr/bin/env python3
"""A stand-in for IT4I's `it4ifree` on the test cluster (not IT4I's program): prints the table in the
format IT4I documents (node-hours per resource type), for the projects in ~/.it4ifree-standin.json:

    {"braas": [["Karolina CPU", 200, 100.0, 12.5], ["Karolina GPU", 200, 8.0, 0.0]]}

(resource type, days left, total, used); without the file, the testbed's account `braas` with 100 CPU
node-hours of which none is used. Standard library only."""

import json
import os
import sys


def rows():
    path = os.path.join(os.path.expanduser("~"), ".it4ifree-standin.json")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        return {"braas": [["Karolina CPU", 200, 100.0, 0.0]]}


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print("usage: it4ifree [-h] [-p]")
        return 0
    widths = (10, 15, 13, 8, 8, 8, 8)
    line = "  ".join("-" * w for w in widths)
    print("\nProjects I am participating in\n==============================")
    header = ("PID", "Resource type", "Days left", "Total", "Used", "By me", "Free")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip())
    print(line)
    for pid, resources in rows().items():
        for i, (resource, days, total, used) in enumerate(resources):
            cells = (pid if i == 0 else "", resource, str(days))
            numbers = tuple(f"{n:.6f}".rstrip("0").rstrip(".") for n in (total, used, used, total - used))
            print("  ".join([c.ljust(w) for c, w in zip(cells, widths, strict=False)] +
                            [n.rjust(w) for n, w in zip(numbers, widths[3:], strict=True)]))
    print("\n\nLegend\n======\nResource type  =   where the node-hours are granted (testbed stand-in)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
