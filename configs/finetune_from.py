"""Fine-tune a trained or converted run with its own network and data settings.

    ambient-train --config=configs/finetune_from.py:runs/edm --workdir=runs/edm_ft \\
        --config.train.num_steps=2000 --config.optim.lr=1e-4

ARG is the work dir to start from (one ambient-train wrote, or ambient-convert edm): its
config.json gives every setting (network, data, objective, training), and finetune.init_from is
that work dir, so the run starts from its EMA weights. Override what the fine-tuning changes on
the command line: the objective (--config.loss.*), the images (--config.data.*), the budget and
the learning rate.
"""

from ambient_jax import config as config_lib
from ambient_jax.types import Config


def get_config(workdir: str) -> Config:
    config = config_lib.load_config(workdir)
    config.finetune.init_from = workdir
    return config
