"""ambient-train: train (or resume) one run.

    ambient-train --config=configs/mnist.py --workdir=runs/mnist_ambient \\
        [--config.loss.sigma_tn=2.0]

Re-running the same command resumes from the latest checkpoint in the work dir.

--init_from=WORKDIR starts from a trained run's EMA weights (fine-tuning; config.finetune says
what else carries over and which noise levels train).

--config=FILE.py[:ARG] is an ml_collections config file; ARG is passed to its get_config
(configs/mnist.py:ddpm, configs/cifar10.py:ambient,1k). Any field can be overridden with
--config.SECTION.FIELD=VALUE (--config.train.num_steps=500, --config.loss.weighting=edm).
--print_config prints every field of the resulting config with its value, and exits.
docs/configs.md says what each field means.
"""

from absl import flags
from ml_collections import config_flags

from ambient_jax.diffusion import losses
from ambient_jax.programs.common import DEFAULT_CONFIG, clean_errors, log, run_program
from ambient_jax.training import train

__doc__ += (
    "\n--config.loss.weighting, the weight of each row's squared error:\n" + losses.weighting_help()
)

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        DEFAULT_CONFIG,
        "ml_collections config file (FILE.py or FILE.py:ARG)",
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir", None, "folder of the run: config, subset record, checkpoints, metrics, samples"
    )
    flags.DEFINE_bool(
        "allow_config_change", False, "resume a work dir although its config differs from --config"
    )
    flags.DEFINE_bool(
        "restart",
        False,
        "train the work dir from step 0: delete its checkpoints, set its metrics.jsonl aside",
    )
    flags.DEFINE_string(
        "init_from",
        None,
        "start from a trained run's EMA weights (its work dir; = --config.finetune.init_from)",
    )
    flags.DEFINE_bool(
        "print_config", False, "print the full config (every field and its value) and exit"
    )


@clean_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
    if FLAGS.init_from is not None:
        FLAGS.config.finetune.init_from = FLAGS.init_from
    if FLAGS.print_config:
        log(FLAGS.config)
        return
    if not FLAGS.workdir:
        raise ValueError(
            "give --workdir=DIR, the folder of the run (it is created, or resumed when it exists)"
        )

    state = train.train(
        FLAGS.config,
        FLAGS.workdir,
        allow_config_change=FLAGS.allow_config_change,
        log=log,
        restart=FLAGS.restart,
    )
    step, total = int(state.step), int(FLAGS.config.train.num_steps)
    if step < total:  # stopped by SIGTERM or Ctrl-C: saved, not finished
        log(
            f"stopped at step {step} of {total}: {FLAGS.workdir} (run the same command to continue)"
        )
    else:
        log(f"done: {FLAGS.workdir}")


def run() -> None:
    run_program(main, define_flags)


if __name__ == "__main__":
    run()
