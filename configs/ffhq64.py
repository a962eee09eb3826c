"""The paper's FFHQ-64 experiment: EDM NCSN++ (62.8M parameters) on 300, 1k or 3k training faces.

ARG is OBJECTIVE,SIZE: `configs/ffhq64.py:ddpm,300` ... `configs/ffhq64.py:ambient,3k`.
Hyper-parameters are the paper's FFHQ-64 script (NCSN++ with channel_mult [1, 2, 2, 2], dropout
0.05, batch 256, Adam lr 1e-4 with a 10 Mimg linear warm-up, EMA half-life 500 kimg with ramp-up
0.05, fp32, 30 Mimg), sigma_tn = 0.5 with the EDM weight, and the 40-step Heun sampler of that
script. Augmentation: EDM's augment pipe (data.augment) at the script's probability 0.15,
with its 9 augment labels fed to the network (the sampler gives zero labels).

Data: FFHQ is not in the tensorflow-datasets catalog at 64x64; prepare the images once from a
folder of FFHQ PNGs (any resolution; shorter side resized, centre crop):

    ambient-prepare --folder=ffhq-images --data_dir=~/tensorflow_datasets/ffhq64 --resolution=64 \\
        --channels=3

One GPU host or one TPU pod slice:

    launch/multi_gpu.sh runs/ffhq64_ambient_1k --config=configs/ffhq64.py:ambient,1k
    launch/tpu_pod.sh my-v4-32 us-central2-b gs://BUCKET/runs/ffhq64_ambient_1k \\
        --config=configs/ffhq64.py:ambient,1k
    ambient-sample --workdir=runs/ffhq64_ambient_1k
    ambient-eval --workdir=runs/ffhq64_ambient_1k --fid --fid_reference=dataset \\
        --dinov2_weights=dinov2_vitg14.pth --dinov2_heads=24

(with the tfds data dir on a bucket for the pod, and --config.data.tfds_data_dir=gs://... .)

The paper's numbers to approach (the lecture's Table 1, DINOv2 ViT-g/14 similarity; its print
lost which training-set size each pair belongs to, given in the order printed, smaller first):
    FID       DDPM 16.21 -> ambient 15.05   |  DDPM 12.26 -> ambient 11.3
    S>0.85    DDPM 63.38 -> ambient 49.68   |  DDPM 55.36 -> ambient 32.08
    S>0.875   DDPM 55.48 -> ambient 40.01   |  DDPM 43.82 -> ambient 17.48
    S>0.9     DDPM 47.86 -> ambient 29.86   |  DDPM 33.92 -> ambient 7.52
"""

from ambient_jax.configs.paper import paper_64x64_config


def get_config(arg="ambient,1k"):
    return paper_64x64_config(arg, "~/tensorflow_datasets/ffhq64", (0.85, 0.875, 0.9))
