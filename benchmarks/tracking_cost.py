"""What memorization tracking (train.track_every) costs at the quickstart's settings.

    python benchmarks/tracking_cost.py [--steps=3000] [--track_every=250]

Trains configs/mnist.py:ambient twice in one process's run of this script, with tracking off and
on (everything else equal), and prints the wall times, their ratio, and the share of the tracked
run spent inside the tracker (the sum of its track_seconds over the run's seconds). The issue's
bound: at most 10% of training time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)


def train(workdir, steps, track_every):
    argv = [os.path.join(BIN, "ambient-train"), "--config=configs/mnist.py:ambient", f"--workdir={workdir}",
            f"--config.train.num_steps={steps}", f"--config.train.track_every={track_every}"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--track_every", type=int, default=250)
    parser.add_argument("--out", default="benchmarks/results/tracking_cost.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        off = train(os.path.join(tmp, "off"), args.steps, 0)
        on = train(os.path.join(tmp, "on"), args.steps, args.track_every)
        records = [json.loads(line) for line in open(os.path.join(tmp, "on", "metrics.jsonl"))]
    inside = sum(r.get("track_seconds", 0.0) for r in records)
    run_seconds = records[-1]["seconds"]
    result = {"steps": args.steps, "track_every": args.track_every, "wall_off_s": off, "wall_on_s": on,
              "wall_ratio": on / off, "tracker_seconds": inside, "tracker_share_of_run": inside / run_seconds,
              "tracking_events": sum("track_seconds" in r for r in records)}
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
