"""The embedded digits at their own 28x28 (padded to 32x32) with a four-level U-Net.

configs/mnist_unet.py at 32x32: `unet_digits32`, the same DDPM++ blocks at 32 channels on levels
32, 16, 8 and 4 with attention at 4x4 (1.77M parameters). At 16x16 the digits U-Net sees the
whole image from its second level (8x8); here a feature of the top level sees 7x7 of the 32x32
pixels, one of the 16x16 level 16x16 to 24x24 of them, and only the 8x8 level sees it all
(tests/test_nets.py): more of the network stays local, which is the shape the paper's claim is
about (local at low noise, global at high noise).

    ambient-train --config=configs/mnist_unet32.py:ddpm --workdir=runs/unet32_ddpm

A train step costs 3.8x the 16x16 U-Net's (2.5 s at batch 128 on a 2-core CPU,
benchmarks/unet_step.py): these runs are meant for an accelerator.
"""

from ambient_jax.configs import mnist_unet


def get_config(arg="ambient"):
    c = mnist_unet.get_config(arg)
    c.data.resolution = 32
    c.model.preset = "unet_digits32"
    return c
