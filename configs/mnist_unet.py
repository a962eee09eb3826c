"""The embedded digits with a U-Net: the paper's kind of network, sized for a 2-core CPU.

Everything is configs/mnist.py (100 digits at 16x16, the same data, EMA and sampler) except the
network: `unet_digits`, EDM's DDPM++ blocks at 32 channels on three levels (16, 8, 4) with
attention at 4x4 (1.26M parameters). Its 3x3 convolutions make it local at low noise, and its
downsampling and attention global at high noise: the case the paper's claim is about
(docs/ambient_quality.md, section 6, measures where plain denoising starts to copy with it).

    ambient-train --config=configs/mnist_unet.py:ddpm --workdir=runs/unet_ddpm
    ambient-train --config=configs/mnist_unet.py --workdir=runs/unet_ambient
    ambient-sample --workdir=runs/unet_ddpm && ambient-eval --workdir=runs/unet_ddpm

ARG picks the objective as in configs/mnist.py. A step of batch 128 takes about 0.65 s on 2 CPU
cores (about 15x the MLP's step), so these runs are long: see docs/ambient_quality.md, section 6.
"""

from ambient_jax.configs import mnist


def get_config(arg="ambient"):
    c = mnist.get_config(arg)
    c.model.preset = "unet_digits"
    # EDM's learning rate for its U-Nets; the MLP's 2e-3 is tuned for the MLP.
    c.optim.lr = 1e-3
    # The Carlini criterion compares the nearest training image with the mean of the k nearest:
    # k = 20 keeps one criterion for every training-set size of the study (n = 30 to 300).
    c.eval.carlini_k = 20
    c.train.checkpoint_every = 500
    return c
