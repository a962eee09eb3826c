"""EDM's four preconditioning classes (Karras et al. 2022, NVlabs/edm `training/networks.py`:
EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond) over the networks of edm_layout.py, with EDM's
parameter and buffer names and forward math, and `snapshot(path, ema)`, which pickles one the way
EDM's training loop writes `network-snapshot-*.pkl` (`{"ema": net, "augment_pipe": ...,
"dataset_kwargs": ...}`). The reference of tests/test_interop.py and
benchmarks/interop_speed.py.
"""

import pickle

import numpy as np
import torch
from edm_layout import DhariwalUNet, Persistent, SongUNet

NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class Precond(Persistent):
    """What EDM's four preconditioning classes share: the network (`model`, of class
    `model_type`) and D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)[:, :img_channels]."""

    def __init__(self, img_resolution, img_channels, label_dim, model_type, out_factor=1,
                 recorded=None, **model_kwargs):  # fmt: skip
        super().__init__(**recorded)
        self.img_resolution, self.img_channels, self.label_dim = (
            img_resolution, img_channels, label_dim,
        )  # fmt: skip
        self.model = NETWORKS[model_type](
            img_resolution=img_resolution, in_channels=img_channels,
            out_channels=img_channels * out_factor, label_dim=label_dim, **model_kwargs,
        )  # fmt: skip

    def forward(self, x, sigma, class_labels=None):
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        labels = None
        if self.label_dim:
            labels = torch.zeros([1, self.label_dim]) if class_labels is None else class_labels
        f = self.model(c_in * x, c_noise.flatten(), class_labels=labels)
        return c_skip * x + c_out * f[:, : self.img_channels]

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class EDMPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet",
                 **model_kwargs):  # fmt: skip
        recorded = dict(img_resolution=img_resolution, img_channels=img_channels,
                        label_dim=label_dim, use_fp16=use_fp16, sigma_min=sigma_min,
                        sigma_max=sigma_max, sigma_data=sigma_data, model_type=model_type,
                        **model_kwargs)  # fmt: skip
        super().__init__(img_resolution, img_channels, label_dim, model_type, recorded=recorded,
                         **model_kwargs)  # fmt: skip
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class VPPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9,
                 beta_min=0.1, M=1000, epsilon_t=1e-5, model_type="SongUNet",
                 **model_kwargs):  # fmt: skip
        recorded = dict(img_resolution=img_resolution, img_channels=img_channels,
                        label_dim=label_dim, use_fp16=use_fp16, beta_d=beta_d, beta_min=beta_min,
                        M=M, epsilon_t=epsilon_t, model_type=model_type,
                        **model_kwargs)  # fmt: skip
        super().__init__(img_resolution, img_channels, label_dim, model_type, recorded=recorded,
                         **model_kwargs)  # fmt: skip
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        root = (self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt()
        return (root - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02,
                 sigma_max=100, model_type="SongUNet", **model_kwargs):  # fmt: skip
        recorded = dict(img_resolution=img_resolution, img_channels=img_channels,
                        label_dim=label_dim, use_fp16=use_fp16, sigma_min=sigma_min,
                        sigma_max=sigma_max, model_type=model_type, **model_kwargs)  # fmt: skip
        super().__init__(img_resolution, img_channels, label_dim, model_type, recorded=recorded,
                         **model_kwargs)  # fmt: skip
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


class iDDPMPrecond(Precond):  # noqa: N801 (EDM's name)
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001,
                 C_2=0.008, M=1000, model_type="DhariwalUNet", **model_kwargs):  # fmt: skip
        recorded = dict(img_resolution=img_resolution, img_channels=img_channels,
                        label_dim=label_dim, use_fp16=use_fp16, C_1=C_1, C_2=C_2, M=M,
                        model_type=model_type, **model_kwargs)  # fmt: skip
        super().__init__(img_resolution, img_channels, label_dim, model_type, out_factor=2,
                         recorded=recorded, **model_kwargs)  # fmt: skip
        self.C_1, self.C_2, self.M = C_1, C_2, M
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):  # M, ..., 1
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def alpha_bar(self, j):
        j = torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        sigma = torch.as_tensor(sigma)
        index = torch.cdist(sigma.to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        index = index.argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape)

    def coefficients(self, sigma):
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


def snapshot(path, ema, augment_p=0.0):
    """Write `ema` as EDM's training loop writes network-snapshot-*.pkl."""
    data = dict(ema=ema.eval().requires_grad_(False), augment_pipe=None,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                    path="datasets/cifar10-32x32.zip", use_labels=False,
                                    resolution=ema.img_resolution))  # fmt: skip
    with open(path, "wb") as f:
        pickle.dump(data, f)
