"""What memorization tracking (train.track_every) costs at the quickstart's settings.

    python benchmarks/tracking_cost.py [--steps=3000] [--track_every=250] [--pairs=2]

Trains configs/mnist.py:ambient with tracking off and on (everything else equal), alternating
off/on `pairs` times so that a change in machine load hits both arms alike, and prints each
pair's wall times and ratio, the median ratio, and the share of each tracked run spent inside the
tracker (the sum of its track_seconds over the run's seconds). The bound we hold it to: at most
10% of training time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)


def train(workdir, steps, track_every):
    argv = [
        os.path.join(BIN, "ambient-train"),
        "--config=configs/mnist.py:ambient",
        f"--workdir={workdir}",
        f"--config.train.num_steps={steps}",
        f"--config.train.track_every={track_every}",
    ]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--track_every", type=int, default=250)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/tracking_cost.json")
    args = parser.parse_args()
    pairs = []
    for i in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            off = train(os.path.join(tmp, "off"), args.steps, 0)
            on = train(os.path.join(tmp, "on"), args.steps, args.track_every)
            records = [json.loads(line) for line in open(os.path.join(tmp, "on", "metrics.jsonl"))]
        inside = sum(r.get("track_seconds", 0.0) for r in records)
        pairs.append(
            {
                "wall_off_s": off,
                "wall_on_s": on,
                "wall_ratio": on / off,
                "tracker_seconds": inside,
                "tracker_share_of_run": inside / records[-1]["seconds"],
                "tracking_events": sum("track_seconds" in r for r in records),
            }
        )
        print(
            f"pair {i + 1}: off {off:.1f} s, on {on:.1f} s, ratio {on / off:.3f}, "
            f"tracker share {pairs[-1]['tracker_share_of_run']:.3f}",
            flush=True,
        )
    result = {
        "steps": args.steps,
        "track_every": args.track_every,
        "pairs": pairs,
        "median_wall_ratio": statistics.median(p["wall_ratio"] for p in pairs),
    }
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
