"""The paper's FFHQ-64 experiment: EDM NCSN++ (62.8M parameters) on 300, 1k or 3k training faces.

ARG is OBJECTIVE,SIZE: `configs/ffhq64.py:ddpm,300` ... `configs/ffhq64.py:ambient,3k`.
Hyper-parameters are the paper's FFHQ-64 script (NCSN++ with channel_mult [1, 2, 2, 2], dropout
0.05, batch 256, Adam lr 1e-4 with a 10 Mimg linear warm-up, EMA half-life 500 kimg with ramp-up
0.05, fp32, 30 Mimg), sigma_tn = 0.5 with the EDM weight, and the 40-step Heun sampler of that
script. Augmentation: horizontal flips only; EDM's augment pipe (the script's probability 0.15)
is not implemented here.

Data: FFHQ is not in the tensorflow-datasets catalog at 64x64; prepare the images once from a
folder of FFHQ PNGs (any resolution; shorter side resized, centre crop):

    ambient-prepare --folder=ffhq-images --data_dir=~/tensorflow_datasets/ffhq64 --resolution=64 --channels=3

One GPU host or one TPU pod slice:

    launch/multi_gpu.sh runs/ffhq64_ambient_1k --config=configs/ffhq64.py:ambient,1k
    launch/tpu_pod.sh my-v4-32 us-central2-b gs://BUCKET/runs/ffhq64_ambient_1k --config=configs/ffhq64.py:ambient,1k
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

from ambient_jax.config import base_config, paper_arg


def get_config(arg="ambient,1k"):
    objective, n_train = paper_arg(arg)
    c = base_config()
    c.data.source = "tfds"
    c.data.tfds_name = "ambient_image_folder"
    c.data.tfds_data_dir = "~/tensorflow_datasets/ffhq64"
    c.data.resolution = 64
    c.data.channels = 3
    c.data.n_train = n_train
    c.data.augment_flip = True

    c.model.preset = "ncsnpp_ffhq64"  # dropout 0.05

    c.loss.objective = objective
    c.loss.sigma_tn = 0.5
    c.loss.weighting = "edm"

    c.optim.lr = 1e-4
    c.optim.warmup_kimg = 10_000.0
    c.ema.halflife_kimg = 500.0
    c.ema.rampup_ratio = 0.05

    c.train.batch_size = 256
    c.train.num_steps = 30_000_000 // 256  # 30 Mimg
    c.train.log_every = 500
    c.train.sample_every = 10_000
    c.train.checkpoint_every = 5_000
    c.train.keep_every = 50_000

    c.sample.num_steps = 40
    c.sample.num_samples = 50_000
    c.sample.batch_size = 500
    c.eval.thresholds = (0.85, 0.875, 0.9)
    return c
