"""ambient-eval: memorization and sample quality of a run, or a table comparing runs.

    ambient-eval --workdir=runs/mnist_ambient [--samples=runs/mnist_ambient/samples.npz]
    ambient-eval --compare runs/mnist_ddpm,runs/mnist_ambient

Writes <workdir>/eval/metrics.json, report.md, nearest.png and similarity_histogram.png.
"""

from absl import flags

from ambient_jax.programs.common import clean_errors, run_program, say

flags.DEFINE_string("workdir", None, "a training work dir with samples")
flags.DEFINE_string("samples", None, "samples .npz (default: <workdir>/samples.npz)")
flags.DEFINE_list("compare", None, "work dirs already evaluated: print one table with a column per run")
FLAGS = flags.FLAGS


@clean_errors
def main(argv):
    del argv
    from ambient_jax.eval import evaluate

    if FLAGS.compare:
        say(evaluate.compare_runs(FLAGS.compare))
        return
    if not FLAGS.workdir:
        raise ValueError("give --workdir=RUN (or --compare RUN1,RUN2,...)")
    evaluate.evaluate_run(FLAGS.workdir, FLAGS.samples, log=say)


def run():
    run_program(main)


if __name__ == "__main__":
    run()
