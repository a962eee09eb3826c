"""What the programs share: the default config path and one clear error line instead of a
traceback."""

import functools
import os
import re
import sys
from typing import Any, Callable

import jax
from absl import app, flags, logging

import ambient_jax.configs
from ambient_jax import xla_cpu
from ambient_jax.checkpoint import CheckpointError
from ambient_jax.data import DataError
from ambient_jax.eval.convert import ConversionError
from ambient_jax.programs.children import ChildFailed
from ambient_jax.training.run_dir import TrainingError
from ambient_jax.training.workdir_lock import WorkdirLocked

# The embedded MNIST experiment, inside the installed package (configs/ installs as
# ambient_jax.configs).
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(ambient_jax.configs.__file__)), "mnist.py"
)


def user_errors() -> tuple[type[BaseException], ...]:
    return (
        DataError,
        TrainingError,
        CheckpointError,
        ConversionError,
        WorkdirLocked,
        ChildFailed,
        ValueError,
        OSError,
        KeyError,
    )


# What to lower when the device runs out of memory, by program (its module's name).
OUT_OF_MEMORY_HINTS = {
    "train_main": "lower --config.train.batch_size (or set --config.model.remat=True, or a "
    "smaller model.preset)",
    "sample_main": "lower --batch_size (the run's sample.batch_size is the default)",
    "diagnose_main": "lower --batch_size (default 256) or --max_images",
    "eval_main": "lower --fid_samples, or use a smaller --dinov2_weights model",
    "annotate_main": "lower --batch_size (the classifier's, default 256)",
    "sweep_main": "lower the runs' batch sizes (--set=--config.train.batch_size=...) or --jobs",
}


def out_of_memory_line(program: str, text: str) -> str:
    """The one line for a device out of memory: how much was asked and what to lower."""
    asked = re.search(r"allocating (\d+) bytes", text)
    size = f" asking for {int(asked.group(1)) / 2**30:.1f} GiB" if asked else ""
    hint = OUT_OF_MEMORY_HINTS.get(program, "lower the batch size")
    return (
        f"error: the device ran out of memory{size}: {hint}, and run the same command again (the "
        "work dir keeps what was saved before)"
    )


# The file-system packages etils.epath asks for when a path is on a bucket (gs://, s3://), and
# the extra of this package that installs each.
BUCKET_PACKAGES = {"gcsfs": "gcs", "s3fs": "s3"}


def clean_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Run main; a user error ends the program with one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(argv):
        logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except user_errors() as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
            sys.exit(2)
        except jax.errors.JaxRuntimeError as err:
            text = " ".join(str(err).split())
            if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
                raise
            program = main.__module__.rsplit(".", 1)[-1]
            print(out_of_memory_line(program, text), file=sys.stderr)
            sys.exit(2)
        except ImportError as err:  # a bucket path without its file system's package
            package = next((p for p in BUCKET_PACKAGES if p in str(err)), None)
            if package is None:
                raise
            print(
                f"error: {err}: a work dir or file on a bucket needs {package}: pip install "
                f"'ambient-jax[{BUCKET_PACKAGES[package]}]' (or pip install {package}); or use a "
                "local path",
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapped


def log(message: str) -> None:
    """One line on stdout, at once: what the programs pass as the library's `log`."""
    print(message, flush=True)


def _unknown_field(err):
    detail = " ".join(
        str(err.args[0] if err.args else err)
        .strip("'\"")
        .replace("\\n", " ")
        .replace("\\'", "'")
        .split()
    )
    print(
        f"error: a --config override names a field that does not exist: {detail}", file=sys.stderr
    )
    sys.exit(2)


def _parse_flags(argv):
    """absl's flag parsing, with an unknown --config.FIELD reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        _unknown_field(err)
    except flags.Error as err:  # a missing, misspelt or ill-typed flag, or a config file that fails
        text = str(err)
        if (
            "Traceback (most recent call last)" in text
        ):  # a config file raised: its own message is the last line
            text = f"{text.split(':', 1)[0]}: {text.strip().splitlines()[-1]}"
        print(
            f"error: {' '.join(text.split())} (--help lists this program's flags)", file=sys.stderr
        )
        sys.exit(2)


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def print_help(module_name: str) -> None:
    """The program's docstring and its own flags with their meaning and default, then exit 0.
    (absl's --help lists the flags of __main__ only: a console script's wrapper, which has none.)"""
    doc = (sys.modules[module_name].__doc__ or "").strip()
    print(
        f"{doc}\n\nflags:\n{flags.FLAGS.module_help(module_name)}\n\n"
        "(--helpfull lists the flags of every library too)"
    )
    sys.exit(0)


def check_config_file_argument(argv: list[str]) -> None:
    """--config=FILE.py[:ARG]: a FILE that does not exist is named before anything else happens."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg[len("--config=") :].split(":", 1)[0]
            if not os.path.isfile(path):
                print(
                    f"error: config file {path} does not exist (give --config=FILE.py[:ARG], e.g. "
                    "configs/mnist.py)",
                    file=sys.stderr,
                )
                sys.exit(2)


def run_program(
    main: Callable[[list[str]], Any], define_flags: Callable[[], Any] | None = None
) -> None:
    """Define the program's flags (config overrides are applied here), then run main."""
    xla_cpu.use_cpu_flags()  # before JAX starts a backend
    check_config_file_argument(sys.argv)
    if define_flags is not None:
        try:
            define_flags()
        except (AttributeError, KeyError) as err:
            _unknown_field(err)
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print_help(main.__module__)
    app.run(main, flags_parser=_parse_flags)
