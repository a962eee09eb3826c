"""Fine-tuning a pretrained model on a few images of a new class (docs/finetune.md).

The digits U-Net of configs/mnist_unet.py (16x16, 1.26M parameters) is pretrained on nine of the
ten digit classes, every class but HELD_OUT_CLASS (4,000 of their 4,500 embedded digits; the
other 500 are held out for tracking and evaluation), with plain denoising. It is then fine-tuned
on n digits of the held-out class and evaluated against that class's other digits.

    ambient-train --config=configs/mnist_finetune.py:pretrain --workdir=runs/finetune/pretrain
    ambient-train --config=configs/mnist_finetune.py:ddpm --workdir=runs/finetune/ddpm_n30 \\
        --init_from=runs/finetune/pretrain --config.data.n_train=30
    ambient-train --config=configs/mnist_finetune.py:noisy --workdir=runs/finetune/noisy_n30 \\
        --init_from=runs/finetune/pretrain --config.data.n_train=30

ARG: "pretrain"; or a fine-tuning row, each FINETUNE_STEPS steps of batch 128 on the new class:
  ddpm     plain denoising at every level;
  ambient  the ambient objective at every level (rescaled weight, sigma_tn 2: the U-Net study's
           row that copies least, docs/ambient_quality.md section 6);
  noisy    the new digits only as their fixed noisy copies, at levels >= sigma_tn (2) alone; below
           it the pretrained network, frozen (finetune.train_above): they are never seen clean;
  gated    noisy with Ambient Omni's gate: the noisy copies train only above
           GATE sigma_tn + 0.05 = 2.36 (s_max = 4: the rescaled factor stays under 13 there, where
           just above sigma_tn it grows without bound), the pretrained network frozen below;
  scratch  plain denoising from random weights on the same n (reference; no --init_from).
ambient_S, noisy_S and gated_S (e.g. noisy_1) are those rows at sigma_tn = S instead of 2.
launch/reproduce_finetune.sh runs the whole study and writes its tables.
"""

from ambient_jax.configs import mnist_unet
from ambient_jax.diffusion.losses import gate_ratio

HELD_OUT_CLASS = 7
PRETRAIN_CLASSES = tuple(c for c in range(10) if c != HELD_OUT_CLASS)
PRETRAIN_STEPS = 3000
FINETUNE_STEPS = 500
FINETUNE_LR = 2e-4
SIGMA_TN = 2.0  # the U-Net study's best row (rescaled weight, sigma_tn 2)
ROWS = ("ddpm", "ambient", "noisy", "gated", "scratch")
GATE = gate_ratio(4)  # Ambient Omni's s_max = 4: sigma > 1.155 sigma_tn


def get_config(arg="pretrain"):
    c = mnist_unet.get_config("ddpm")
    c.train.track_every = 100
    c.train.checkpoint_every = 100
    c.train.sample_every = 0
    # 500 samples: about the held-out sevens' count (470 at n = 30), so FD and FID compare equal
    # sets, and half the sampling time of the U-Net study's 1,000
    c.sample.num_samples = 500
    if arg == "pretrain":
        c.data.classes = PRETRAIN_CLASSES
        c.data.n_train = 4000  # of 4,500: 500 held out
        c.train.num_steps = PRETRAIN_STEPS
        c.train.track_every = 500
        c.train.checkpoint_every = 500
        c.train.keep_every = 500
        return c
    arg, _, level = arg.partition("_")
    if arg not in ROWS or (level and arg not in ("ambient", "noisy", "gated")):
        raise ValueError(
            f"configs/mnist_finetune.py takes 'pretrain', one of {ROWS}, or ambient_S / noisy_S / "
            f"gated_S (sigma_tn S), got {arg!r}"
        )
    sigma_tn = float(level) if level else SIGMA_TN
    c.data.classes = (HELD_OUT_CLASS,)
    c.data.n_train = 30
    c.train.num_steps = FINETUNE_STEPS
    if arg == "scratch":
        return c  # the U-Net study's own learning rate and warm-up, from random weights
    c.optim.lr = FINETUNE_LR
    c.optim.warmup_kimg = 0.0
    if arg in ("ambient", "noisy", "gated"):
        c.loss.objective = "ambient"
        c.loss.weighting = "rescaled"
        c.loss.sigma_tn = sigma_tn
    if arg == "noisy":
        c.finetune.train_above = sigma_tn
    if arg == "gated":
        c.loss.sigma_switch = round(GATE * sigma_tn + 0.05, 4)
        c.finetune.train_above = c.loss.sigma_switch
    return c
