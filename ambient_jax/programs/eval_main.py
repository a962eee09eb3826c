"""ambient-eval: memorization and sample quality of a run, or a table comparing runs.

    ambient-eval --workdir=runs/mnist_ambient [--samples=runs/mnist_ambient/samples.npz]
    ambient-eval --workdir=runs/mnist_ambient --fid [--protocol=edm]      # + Inception FID / \\
        memorization
    ambient-eval --workdir=runs/mnist_ambient --dinov2_weights=dinov2_vits14.pth --dinov2_heads=6
    ambient-eval --compare runs/mnist_ddpm,runs/mnist_ambient

Writes <workdir>/eval/metrics.json, report.md, nearest.png and similarity_histogram.png.
"""

from absl import flags

from ambient_jax.eval import evaluate, report
from ambient_jax.programs.common import clean_errors, log, run_program

flags.DEFINE_string("workdir", None, "a training work dir with samples")
flags.DEFINE_string("samples", None, "samples .npz (default: <workdir>/samples.npz)")
flags.DEFINE_list(
    "compare", None, "work dirs already evaluated: print one table with a column per run"
)
flags.DEFINE_bool(
    "fid",
    None,
    "also FID against held-out images and memorization in Inception space "
    "(needs `ambient-convert inception` once); default: on when the converted weights exist",
)
flags.DEFINE_enum("protocol", "edm", ["edm", "pytorch_fid"], "Inception input protocol")
flags.DEFINE_enum(
    "fid_reference",
    "heldout",
    ["heldout", "dataset"],
    "FID against as many held-out images as samples, or also against the whole data set (cached "
    "statistics)",
)
flags.DEFINE_integer(
    "fid_samples",
    0,
    "FID and embedding similarity on the first N samples against N held-out images "
    "(0 = all samples); FIDs compare only at equal counts",
)
flags.DEFINE_string(
    "dinov2_weights",
    None,
    "DINOv2 weights (.pth or .safetensors): memorization in DINOv2 space, as the paper",
)
flags.DEFINE_integer("dinov2_heads", 6, "attention heads of that model: ViT-S/B/L/g = 6/12/16/24")
flags.DEFINE_enum("dinov2_recipe", "paper", ["paper", "standard"], "DINOv2 preprocessing recipe")
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    del argv

    if FLAGS.compare:
        log(report.compare_runs(FLAGS.compare))
        return
    if not FLAGS.workdir:
        raise ValueError("give --workdir=RUN (or --compare RUN1,RUN2,...)")
    use_fid = evaluate.inception_available() if FLAGS.fid is None else FLAGS.fid
    options = evaluate.EmbeddingOptions(
        inception_fid=use_fid,
        inception_protocol=FLAGS.protocol,
        fid_reference=FLAGS.fid_reference,
        fid_samples=FLAGS.fid_samples,
        dinov2_weights=FLAGS.dinov2_weights,
        dinov2_heads=FLAGS.dinov2_heads,
        dinov2_recipe=FLAGS.dinov2_recipe,
    )
    evaluate.evaluate_run(FLAGS.workdir, FLAGS.samples, options, log=log)


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
