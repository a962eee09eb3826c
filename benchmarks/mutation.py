"""Mutation harness: does the test suite catch a wrong formula?

    python benchmarks/mutation.py                 # every mutant
    python benchmarks/mutation.py --only=ema_      # mutants whose name starts with a prefix
    python benchmarks/mutation.py --list           # the mutants, without running anything
    python benchmarks/mutation.py --report=benchmarks/results/mutation.md   # + the verdicts file

Each mutant (benchmarks/mutants.toml) is one small textual change to one line of the core (a
coefficient, a weight, a reduction, a key, a threshold) and the test selection that must notice
it. The harness copies the tracked files of the repository into a scratch folder once, then for
each mutant: applies the change there, runs the tests that name it first (the `file::test`
entries of its selection and the test that caught it last time, recorded in
benchmarks/results/mutation_catchers.json), and its whole selection (`pytest -x`) only if those
pass; restores the file, and prints CAUGHT with the first failing test or SURVIVED. The test that
each mutant still applies to one line (LINE_PIN) is deselected: it fails on any edit of a pinned
line, so only behaviour tests count. The project itself is never modified. Opt-in: not part of
launch/test.sh. `--report` writes the verdicts as a table whose header is counted from its rows.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANTS_FILE = os.path.join(ROOT, "benchmarks", "mutants.toml")


def load_mutants(path=MUTANTS_FILE):
    """[(name, file, old text, new text, tests that must catch it)], as mutants.toml lists them."""
    with open(path, "rb") as f:
        table = tomllib.load(f)["mutant"]
    return [(m["name"], m["file"], m["old"], m["new"], list(m["tests"])) for m in table]


def scratch_copy():
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    listed += (
        subprocess.run(
            ["git", "ls-files", "-z", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    scratch = tempfile.mkdtemp(prefix="ambient_mutation_")
    for name in filter(None, listed):
        if not os.path.isfile(os.path.join(ROOT, name)):
            continue
        os.makedirs(os.path.dirname(os.path.join(scratch, name)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), os.path.join(scratch, name))
    return scratch


# The test that each mutant still applies to one line: it fails on any edit to a pinned line,
# whatever the edit does, so it is no verdict on whether the behaviour tests notice a mutant.
LINE_PIN = (
    "tests/test_mutation_pins.py::"
    "test_every_mutant_of_the_harness_still_applies_to_one_place_and_names_real_tests"
)


def pytest_argv(tests):
    """The pytest command for a mutant's tests: stop at the first failure, the line pin left out."""
    tests = [t for t in tests if t != LINE_PIN]
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "--deselect", LINE_PIN, *tests]  # fmt: skip


def run_tests(scratch, tests, timeout):
    env = dict(os.environ, PYTHONPATH=scratch, JAX_PLATFORMS="cpu")
    argv = pytest_argv(tests)
    try:
        result = subprocess.run(
            argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, "timeout"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
    return result.returncode, (failed[0] if failed else "")


CATCHERS = os.path.join(ROOT, "benchmarks", "results", "mutation_catchers.json")


def first_stage(tests, caught_before):
    """The tests that name a mutant: its selection's `file::test` entries and the test that
    caught it last time (when that test still lies in its selection's files)."""
    named = [t for t in tests if "::" in t]
    files_ = {t.split("::")[0] for t in tests}
    if caught_before and caught_before.split("::")[0] in files_ and caught_before not in named:
        named.append(caught_before)
    return named


def verdict(scratch, tests, caught_before, timeout):
    """(exit code or None on a timeout, first failing test, which stage decided): the tests that
    name the mutant, then, only if they all pass, its whole selection."""
    named = first_stage(tests, caught_before)
    if named:
        code, failure = run_tests(scratch, named, timeout)
        if code == 1 or (code == 0 and named == tests):  # 1: a test failed
            return code, failure, "named"
        # 0: they passed; otherwise a named test no longer exists (pytest's 4 and 5) or the run
        # broke, and neither is a verdict: the whole selection decides
    code, failure = run_tests(scratch, tests, timeout)
    return code, failure, "selection"


def write_report(path, results):
    """The verdicts as markdown; the header's counts come from the rows below it."""
    caught = sum(r["verdict"] == "caught" for r in results)
    lines = [
        f"# Mutation harness verdicts (benchmarks/mutation.py), {datetime.date.today()}",
        "",
        f"{len(results)} mutants run, {caught} caught ({100 * caught / max(len(results), 1):.0f}%),"
        f" {sum(r['seconds'] for r in results) / 60:.1f} minutes in all. The seconds are each"
        " mutant's wall time on this machine (both stages).",
        "",
        "| # | mutant | verdict | catching test | stage | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"| {i} | {r['name']} | {r['verdict']} | {r['failure'] or '-'} | {r['stage']} | "
            f"{r['seconds']:.0f} |"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="run the mutants whose name starts with this prefix"
    )
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--skip", type=int, default=0, help="start after this many mutants (resume a partial run)"
    )
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--report", default="", help="write the verdicts as markdown here")
    args = parser.parse_args()
    chosen = [m for m in load_mutants() if m[0].startswith(args.only)][args.skip :]
    for name, path, old, _, _ in chosen:  # every change must apply to exactly one place
        count = open(os.path.join(ROOT, path)).read().count(old)
        if count != 1:
            sys.exit(f"error: mutant {name}: the text to change occurs {count} times in {path}")
    if args.list:
        for name, path, _, _, tests in chosen:
            print(f"{name:34s} {path:40s} {' '.join(tests)}")
        return
    scratch = scratch_copy()
    env = dict(os.environ, PYTHONPATH=scratch)
    where = subprocess.run(
        [sys.executable, "-c", "import ambient_jax; print(ambient_jax.__file__)"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(scratch):
        sys.exit(
            f"error: the scratch copy is not the one imported ({where}); uninstall other copies "
            "of ambient_jax"
        )
    catchers = json.load(open(CATCHERS)) if os.path.exists(CATCHERS) else {}
    results = []
    try:
        for name, path, old, new, tests in chosen:
            target = os.path.join(scratch, path)
            original = open(target).read()
            if original.count(old) != 1:
                sys.exit(
                    f"error: mutant {name}: the text to change occurs {original.count(old)} times "
                    f"in {path}"
                )
            with open(target, "w") as f:
                f.write(original.replace(old, new))
            start = time.perf_counter()
            try:
                code, first_failure, stage = verdict(
                    scratch, tests, catchers.get(name), args.timeout
                )
            finally:
                with open(target, "w") as f:
                    f.write(original)
            seconds = time.perf_counter() - start
            if code is None:  # not a verdict: the selection did not finish
                result = "timeout"
                print(
                    f"TIMEOUT  {name:34s} ({seconds:.0f} s; {' '.join(tests)}): not counted as "
                    "caught",
                    flush=True,
                )
            elif code == 0:
                result = "survived"
                print(f"SURVIVED {name:34s} ({seconds:.0f} s; {' '.join(tests)})", flush=True)
            elif code != 1:  # pytest could not run the selection (a usage error, no tests)
                result = "error"
                print(f"ERROR    {name:34s} (pytest exit {code}; {' '.join(tests)})", flush=True)
            else:
                result = "caught"
                if first_failure:
                    catchers[name] = first_failure
                print(
                    f"CAUGHT   {name:34s} by {first_failure or code} ({stage} tests, "
                    f"{seconds:.0f} s)",
                    flush=True,
                )
            results.append(
                dict(
                    name=name,
                    verdict=result,
                    failure=first_failure if result == "caught" else "",
                    stage=stage,
                    seconds=seconds,
                )
            )
            with open(CATCHERS, "w") as f:
                json.dump(dict(sorted(catchers.items())), f, indent=1)
            if args.report:
                write_report(args.report, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    caught = sum(r["verdict"] == "caught" for r in results)
    print(
        f"\n{caught} of {len(chosen)} mutants caught ({100 * caught / len(chosen):.0f}%; a "
        "timeout counts as not caught)"
    )


if __name__ == "__main__":
    main()
