"""ambient-train: train (or resume) one run.

    ambient-train --config=configs/mnist.py --workdir=runs/mnist_ambient [--config.loss.sigma_tn=2.0]

Re-running the same command resumes from the latest checkpoint in the work dir.
"""

from absl import flags
from ml_collections import config_flags

from ambient_jax.programs.common import DEFAULT_CONFIG, clean_errors, say, run_program

FLAGS = flags.FLAGS


def define_flags():
    # The config file is loaded (and --config.a.b overrides applied) when its flag is defined.
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "ml_collections config file (FILE.py or FILE.py:ARG)", lock_config=True)
    flags.DEFINE_string("workdir", None, "folder of the run: config, subset record, checkpoints, metrics, samples", required=True)
    flags.DEFINE_bool("allow_config_change", False, "resume a work dir although its config differs from --config")


@clean_errors
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
    from ambient_jax import train

    train.train(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change, log=say)
    say(f"done: {FLAGS.workdir}")


def run():
    run_program(main, define_flags)


if __name__ == "__main__":
    run()
