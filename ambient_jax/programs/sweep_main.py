"""ambient-sweep: train, sample and evaluate a grid of runs, then the Table-1 / Pareto report.

    ambient-sweep run --config=configs/mnist.py --root=runs/sweep --sigma_tn=0,0.5,1,1.5,2 \
        --n_train=100,300 --seeds=0,1,2 [--set=--config.train.num_steps=2000 ...] [--jobs=8]
    ambient-sweep commands ...   # the same grid as one shell line per run, for separate jobs
    ambient-sweep report --root=runs/sweep   # <root>/table.md and <root>/pareto.png
    ambient-sweep variants --root=runs/variants --variants=ddpm,rescaled_1.5 --seeds=0,1 \
        [--stages=train,sample,eval,diagnose] [--jobs=4] [--set=...] [--fid_samples=500]
    ambient-sweep variants-table --root=runs/variants [--mean] [--json=raw.json]

sigma_tn = 0 means the ddpm objective. Runs already evaluated are skipped. `variants` runs the
registered variants of configs/variants.py side by side (programs/variant_runs.py), each stage
skipped where its output exists; `variants-table` prints their table.
"""

from absl import flags

from ambient_jax.configs.variants import VARIANTS
from ambient_jax.programs import children, sweep, variant_runs
from ambient_jax.programs.common import DEFAULT_CONFIG, clean_errors, log, run_program

flags.DEFINE_string("root", None, "folder that holds one work dir per run", required=True)
flags.DEFINE_string("config", DEFAULT_CONFIG, "config file (FILE.py or FILE.py:ARG) of every run")
flags.DEFINE_list("sigma_tn", ["0", "0.5", "1", "1.5", "2"], "noise levels; 0 = ddpm")
flags.DEFINE_list("n_train", ["100"], "training-set sizes")
flags.DEFINE_list("seeds", ["0"], "train.seed values")
flags.DEFINE_multi_string("set", [], "extra --config.a.b=v overrides for every run")
flags.DEFINE_integer(
    "jobs", 1, "run: how many runs at once (each run's output then goes to its sweep.log)"
)
flags.DEFINE_bool("fid", False, "evaluate with --fid (Inception) as well")
flags.DEFINE_string("quality", None, "report: the y metric (default: the first quality row)")
flags.DEFINE_string("memorization", None, "report: the x metric (default: extraction_rate)")
flags.DEFINE_list("variants", list(VARIANTS), "variants: the registered variants to run")
flags.DEFINE_list("stages", list(variant_runs.STAGES), "variants: which stages to run")
flags.DEFINE_integer("fid_samples", 500, "variants: samples for the Inception FID")
flags.DEFINE_bool("mean", False, "variants-table: mean ± std over seeds, a row per variant")
flags.DEFINE_string("json", None, "variants-table: also write the raw results here")
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    children.forward_signals()  # a stopped sweep stops the programs it runs
    commands = ("run", "commands", "report", "variants", "variants-table")
    if len(argv) != 2 or argv[1] not in commands:
        raise ValueError(f"name the command: ambient-sweep {' | '.join(commands)} --root=DIR ...")
    if argv[1] == "variants":
        variant_runs.run_many(
            FLAGS.root, FLAGS.variants, [int(s) for s in FLAGS.seeds], FLAGS.fid_samples,
            FLAGS.set, FLAGS.stages, FLAGS.jobs, log,
        )  # fmt: skip
        return
    if argv[1] == "variants-table":
        log(variant_runs.table_text(FLAGS.root, FLAGS.mean, FLAGS.json))
        return
    if argv[1] == "report":
        log(sweep.report(FLAGS.root, FLAGS.quality, FLAGS.memorization))
        log(f"wrote {FLAGS.root}/table.md and {FLAGS.root}/pareto.png")
        return
    runs = sweep.commands(
        FLAGS.config,
        FLAGS.root,
        [float(s) for s in FLAGS.sigma_tn],
        [int(n) for n in FLAGS.n_train],
        [int(s) for s in FLAGS.seeds],
        FLAGS.set,
        () if FLAGS.fid else ("--nofid",),
    )
    if argv[1] == "commands":
        for _, steps in runs:
            log(" && ".join(" ".join(step) for step in steps))
        return
    sweep.run_all(runs, log=log, jobs=FLAGS.jobs)
    log(sweep.report(FLAGS.root))


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
