"""Every console program explains itself (--help) and answers a bad command line in one line."""

import configparser
import os
import subprocess
import sys

import pytest
from child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def console_scripts():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [tuple(part.strip() for part in line.split("=")) for line in lines]


def run(target, *args, report_start=False):
    module, function = target.split(":")
    code = f"import sys; sys.argv[0] = 'prog'; from {module} import {function}; {function}()"
    if report_start:  # stderr also says whether importing the program started a JAX backend
        # (then the program's CPU flags could not reach XLA) and the XLA_FLAGS it ends with
        code = (
            "import atexit, os, sys; sys.argv[0] = 'prog'; "
            "atexit.register(lambda: print('XLA_FLAGS at exit:', os.environ['XLA_FLAGS'], "
            "file=sys.stderr)); "
            f"from {module} import {function}; from jax._src import xla_bridge; "
            "print('backend started by the import:', xla_bridge.backends_are_initialized(), "
            f"file=sys.stderr); {function}()"
        )
    env = child_env()
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("name, target", console_scripts())
def test_help_says_what_the_program_does_and_lists_its_flags(name, target):
    result = run(target, "--help", report_start=True)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.startswith(name + ":"), result.stdout[:200]  # the docstring first
    assert "flags:" in result.stdout and "(default:" in result.stdout
    assert "Try --helpfull" not in result.stdout
    # the program sets its CPU flags (ambient_jax.xla_cpu) before JAX starts a backend
    assert "backend started by the import: False" in result.stderr
    assert "XLA_FLAGS at exit: --xla_cpu_experimental_ynn_fusion_type=" in result.stderr


def test_train_help_explains_config_files_and_overrides():
    out = run("ambient_jax.programs.train_main:run", "--help").stdout
    assert (
        "--config=FILE.py[:ARG]" in out
        and "--config.SECTION.FIELD=VALUE" in out
        and "--print_config" in out
    )
    listed = run("ambient_jax.programs.train_main:run", "--print_config")
    assert (
        listed.returncode == 0
        and "sigma_tn: 1.5" in listed.stdout
        and "track_every: 250" in listed.stdout
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--num_samples=abc", "--workdir=x"], "--num_samples=abc"),  # a value of the wrong type
        (["--bogus=1", "--workdir=x"], "Unknown command line flag 'bogus'"),  # a misspelt flag
        ([], "--workdir"),  # a required flag left off
    ],
)
def test_a_bad_command_line_is_one_error_line_with_exit_2(args, says):
    result = run("ambient_jax.programs.sample_main:run", *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr


def test_a_config_override_of_the_wrong_type_is_one_error_line():
    result = run(
        "ambient_jax.programs.train_main:run",
        "--config.train.batch_size=abc",
        "--workdir=/nonexistent/x",
    )
    assert (
        result.returncode == 2
        and result.stderr.strip().startswith("error: ")
        and len(result.stderr.strip().splitlines()) == 1
    )


def signal_recording_child(record):
    """A child program that writes TERM to `record` on SIGTERM and exits 0; it prints 'ready',
    then sleeps 120 s."""
    return (
        "import signal, sys, time; "
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(record)!r}, 'w').write('TERM'), "
        "sys.exit(0))); print('ready', flush=True); time.sleep(120)"
    )


def test_a_stopped_parent_stops_the_programs_it_runs(tmp_path):
    """programs.children: a sweep killed with SIGTERM passes it on to the program it is running
    (here a child that records the signal), waits for it, and exits 128 + 15; no new child starts
    after the signal."""
    import signal
    import time

    record = tmp_path / "child_got"
    child = signal_recording_child(record)
    parent = (
        "import sys, threading; from ambient_jax.programs import children; "
        "children.forward_signals(); "
        f"run = lambda: [children.run([sys.executable, '-c', {child!r}]) for _ in range(3)]; "
        "t = threading.Thread(target=run); t.start(); t.join()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"  # the first child runs
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert record.read_text() == "TERM"  # the child got SIGTERM and could save its work
    assert time.time() - start < 30 and "stopping 1 running program" in proc.stderr.read()
    assert proc.stdout.read() == ""  # no second child started


def test_a_stop_signal_that_lands_on_another_thread_still_stops_the_children(tmp_path):
    """After SIGSTOP and SIGCONT the kernel may hand a sweep's SIGTERM to a worker thread; Python
    runs the handler in the main thread only, which children.as_completed wakes twice a second
    (a plain wait slept until the run ended, its child running on). Here a thread signals
    itself, as the kernel would."""
    import time

    record = tmp_path / "child_got"
    child = signal_recording_child(record)
    parent = (
        "import concurrent.futures, signal, sys, threading, time\n"
        "from ambient_jax.programs import children\n"
        "children.forward_signals()\n"
        "pool = concurrent.futures.ThreadPoolExecutor(1)\n"
        f"run = pool.submit(children.run, [sys.executable, '-c', {child!r}])\n"
        "def signal_myself():\n"
        "    time.sleep(3)\n"
        "    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)\n"
        "threading.Thread(target=signal_myself).start()\n"
        "list(children.as_completed([run]))\n"
    )
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, cwd=ROOT, timeout=200
    )
    assert done.returncode == 128 + 15, done.stderr[-2000:]
    assert record.read_text() == "TERM" and "stopping 1 running program" in done.stderr
    assert time.time() - start < 60  # not the child's 120 s


@pytest.mark.parametrize(
    "program, says",
    [
        ("train", "lower --config.train.batch_size"),
        ("sample", "lower --batch_size (the run's sample.batch_size"),
        ("eval", "lower --fid_samples"),
        ("diagnose", "lower --batch_size (default 256) or --max_images"),
        ("annotate", "lower --batch_size (the classifier's"),
    ],
)
def test_out_of_memory_in_each_program_is_one_line_that_says_what_to_lower(tmp_path, program, says):
    """A device out of memory (the 49-line traceback of a 32x32 U-Net at batch 8192) ends each
    program with one error line: how much it asked for and which of its settings to lower. The
    error is injected into the program's own run (its main raises what XLA raises)."""
    workdir = "" if program == "annotate" else ", '--workdir=x'"  # a required flag
    code = (
        "import sys, jax\n"
        f"from ambient_jax.programs import {program}_main as m\n"
        "def main(argv):\n"
        "    raise jax.errors.JaxRuntimeError("
        "'RESOURCE_EXHAUSTED: Out of memory allocating 148113103040 bytes.')\n"
        "main.__module__ = m.main.__module__\n"
        "m.main = m.clean_errors(main)\n"
        f"sys.argv = ['ambient-{program}'{workdir}]\n"
        "m.run()\n"
    )
    env = child_env()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=300)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "ran out of memory asking for 137.9 GiB" in lines[0] and says in lines[0], lines[0]


def test_other_runtime_errors_still_raise():
    import jax

    from ambient_jax.programs.common import clean_errors

    @clean_errors
    def other(argv):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError):
        other([])


def test_a_rerun_sweep_names_the_run_a_leftover_program_holds_and_goes_on(tmp_path, capsys):
    """After a kill -9 of ambient-sweep its ambient-train runs on, holding its work dir's lock.
    Before: the rerun's ambient-train failed on the lock and the sweep ended in a traceback. Now
    the rerun names that run and the pid from its lock, runs the others, and a run whose lock's
    process is gone runs again; failed programs end the sweep in one line."""
    import json
    import socket
    import subprocess

    from ambient_jax.programs import sweep
    from ambient_jax.programs.common import clean_errors
    from ambient_jax.training import workdir_lock

    held, free = tmp_path / "held", tmp_path / "free"
    held.mkdir()
    free.mkdir()
    leftover = subprocess.Popen(["sleep", "120"])
    lock = {"pid": leftover.pid, "host": socket.gethostname(), "started": "2026-12-07T10:00:00"}
    (held / workdir_lock.LOCK_NAME).write_text(json.dumps(lock))
    touch = lambda run: [["touch", str(run / "ran")]]
    lines = []
    try:
        sweep.run_all([(str(held), touch(held)), (str(free), touch(free))], log=lines.append)
    finally:
        leftover.kill()
        leftover.wait()
    assert (free / "ran").exists() and not (held / "ran").exists()
    [skipped] = [line for line in lines if line.startswith("skip")]
    assert f"skip {held}: pid {leftover.pid}" in skipped and f"kill {leftover.pid}" in skipped
    sweep.run_all([(str(held), touch(held))], log=lines.append)  # the pid is gone: a stale lock
    assert (held / "ran").exists()

    @clean_errors
    def failing(argv):
        sweep.run_all([(str(free), [["false"]])], log=lambda _: None)

    with pytest.raises(SystemExit) as stop:
        failing([])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and line.startswith("error: false failed for")
