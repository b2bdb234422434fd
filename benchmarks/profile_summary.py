"""Summarize a py-spy raw profile of the hub (storm_1000.py --profile FILE).

Run: .venv/bin/python benchmarks/profile_summary.py FILE [--top 20]

Prints the share of samples in campfleet's own code (any stack with a campfleet/ frame: the
ShipSpawner, the registry, the control API) against JupyterHub, tornado and the rest, then the
top frames by own samples and by inclusive samples.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def summarize(path: Path, top: int) -> str:
    total = 0
    ours = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        if any("campfleet/" in f for f in frames):
            ours += n
    if not total:
        return f"{path}: no samples (is it py-spy's --format raw output?)"
    out = [f"{total} samples; campfleet's code in {ours / total:.1%} of them"]
    out.append("-- own samples")
    out += [f"{n / total:6.1%} {f[:140]}" for f, n in own.most_common(top)]
    out.append("-- inclusive samples")
    out += [f"{n / total:6.1%} {f[:140]}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    if not args.profile.is_file():
        print(f"{args.profile}: no such file; record one with storm_1000.py --profile FILE")
        return 2
    print(summarize(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
