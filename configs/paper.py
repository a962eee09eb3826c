"""The recipe the paper's experiment configs share (cifar10.py, ffhq64.py, imagenet64.py).

Shah, Kalavasis, Klivans and Daras (2025) train EDM's networks with EDM's hyper-parameters
(Karras et al. 2022): Adam with a 10 Mimg linear warm-up, an EMA half-life of 500 kimg with
ramp-up 0.05, no weight decay, fp32, the EDM loss weight, and sigma_tn = 0.5 for the ambient
objective. Each data set's file states the rest.
"""

from ambient_jax.config import base_config

SIZES = {"300": 300, "1k": 1000, "3k": 3000}


def paper_arg(arg, default="ambient,1k"):
    """("ddpm" | "ambient", n_train) from a paper config's ARG "OBJECTIVE,SIZE" (SIZE 300, 1k or
    3k)."""
    parts = (arg or default).split(",")
    if len(parts) != 2 or parts[0] not in ("ddpm", "ambient") or parts[1] not in SIZES:
        raise ValueError(
            f"config argument {arg!r}: give OBJECTIVE,SIZE with OBJECTIVE ddpm or ambient and SIZE "
            f"one of {', '.join(SIZES)} (for example configs/cifar10.py:ambient,1k)"
        )
    return parts[0], SIZES[parts[1]]


def paper_config(
    arg, *, preset, resolution, batch_size, lr, mimg, sample_steps, thresholds, augment_p
):
    """The shared recipe for ARG "OBJECTIVE,SIZE" with the per-data-set choices named."""
    objective, n_train = paper_arg(arg)
    c = base_config()
    c.data.source = "tfds"
    c.data.resolution = resolution
    c.data.channels = 3
    c.data.n_train = n_train
    # EDM's augment pipe with its labels fed to the network (its x-flip is a fair coin on every
    # image, so no separate flips).
    c.data.augment_flip = False
    c.data.augment_p = augment_p
    c.data.augment_pipe = "edm"

    c.model.preset = preset

    c.loss.objective = objective
    c.loss.sigma_tn = 0.5
    c.loss.weighting = "edm"

    c.optim.lr = lr
    c.optim.warmup_kimg = 10_000.0
    c.ema.halflife_kimg = 500.0
    c.ema.rampup_ratio = 0.05

    c.train.batch_size = batch_size
    c.train.num_steps = mimg * 1_000_000 // batch_size
    c.train.log_every = 500
    c.train.checkpoint_every = 5_000

    c.sample.num_steps = sample_steps
    c.sample.num_samples = 50_000
    c.eval.thresholds = thresholds
    return c


def paper_64x64_config(arg, tfds_data_dir, thresholds):
    """The paper's 64x64 recipe (its FFHQ-64 script), shared by ffhq64.py and imagenet64.py:
    NCSN++ (channel_mult [1, 2, 2, 2], dropout 0.05), batch 256, Adam lr 1e-4, 30 Mimg, 40 Heun
    steps, augment probability 0.15, images prepared as an ambient_image_folder under
    `tfds_data_dir`."""
    c = paper_config(
        arg,
        preset="ncsnpp_ffhq64",
        resolution=64,
        batch_size=256,
        lr=1e-4,
        mimg=30,
        sample_steps=40,
        thresholds=thresholds,
        # The paper's scripts/train.sh (FFHQ-64) passes --augment=0.15 (kulinshah98/
        # memorization_noisy_data), as EDM's own FFHQ-64 and AFHQv2-64 recipes do.
        augment_p=0.15,
    )
    c.data.tfds_name = "ambient_image_folder"
    c.data.tfds_data_dir = tfds_data_dir
    c.train.sample_every = 10_000
    c.train.keep_every = 50_000
    c.sample.batch_size = 500
    return c
