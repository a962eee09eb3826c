"""EDM's SongUNet (DDPM++ / NCSN++) written in PyTorch from the architecture of
ambient_jax.nets.unet (NCHW), running on the Flax network's own weights: the peer of the
benchmarks (benchmarks/peer_torch.py) and a reference for the parity tests (tests/test_peer.py
checks it against our network to 1e-5). torch is a test dependency (CPU build)."""

import collections
import math

import jax
import numpy as np
import torch
import torch.nn.functional as F

from ambient_jax import nets

# ----------------------------------------------------------------------------- the network


def torch_params(flax_params, device="cpu"):
    """The Flax variables as torch tensors: conv kernels HWIO -> OIHW, everything else as is."""

    def convert(leaf):
        a = np.asarray(leaf, np.float32)
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        return torch.tensor(np.ascontiguousarray(a), device=device)

    return jax.tree_util.tree_map(convert, flax_params)


class Scope:
    """Flax's names for a module's children: the k-th child of a kind is KIND_k."""

    def __init__(self, tree):
        self.tree, self.counts = tree, collections.Counter()

    def next(self, kind):
        name = f"{kind}_{self.counts[kind]}"
        self.counts[kind] += 1
        return self.tree[name]


def _fir(resample_filter, channels, x):
    f = torch.tensor(resample_filter, dtype=x.dtype, device=x.device)
    f = torch.outer(f, f)
    return (f / f.sum()).expand(channels, 1, *f.shape)


def fir_down(x, resample_filter, padding):
    w = _fir(resample_filter, x.shape[1], x)
    return F.conv2d(x, w, stride=2, padding=padding, groups=x.shape[1])


def fir_up(x, resample_filter, padding):
    w = _fir(resample_filter, x.shape[1], x) * 4
    return F.conv_transpose2d(x, w, stride=2, padding=padding, groups=x.shape[1])


def group_norm(p, x):
    return F.group_norm(x, min(32, x.shape[1] // 4), p["scale"], p["bias"], eps=1e-6)


def dense(p, x):
    return x @ p["kernel"] + p["bias"] if "bias" in p else x @ p["kernel"]


def conv(p, x, kernel, up=False, down=False, fused=False, resample_filter=(1, 1)):
    """EDM's Conv2d as ambient_jax.nets.unet.Conv: optional FIR resampling, then the conv."""
    f_pad, w_pad = (len(resample_filter) - 1) // 2, kernel // 2
    inner = p["Conv_0"]
    if fused and down:
        x = F.conv2d(x, inner["kernel"], inner["bias"], padding=w_pad + f_pad)
        return fir_down(x, resample_filter, 0)
    if up:
        x = fir_up(x, resample_filter, f_pad)
    if down:
        x = fir_down(x, resample_filter, f_pad)
    return F.conv2d(x, inner["kernel"], inner["bias"], padding=w_pad)


def attention(p, x):
    s = Scope(p)
    b, c, h, w = x.shape
    qkv_p, norm_p, proj_p = s.next("Dense"), s.next("GroupNorm"), s.next("Dense")
    rows = group_norm(norm_p, x).permute(0, 2, 3, 1).reshape(b, h * w, c)
    q, k, v = dense(qkv_p, rows).split(c, dim=-1)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
    out = dense(proj_p, weights @ v)
    return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


def noise_embedding(noise_labels, channels, embedding_type):
    """SongUNet's positional (DDPM++) or Fourier (NCSN++) embedding of the noise labels."""
    if embedding_type == "positional":
        half = channels // 2
        freqs = (1.0 / 10000) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        freqs = freqs.to(noise_labels.device)
    else:
        freqs = torch.tensor(
            np.random.RandomState(0).randn(channels // 2).astype(np.float32) * 16.0
        ).to(noise_labels.device) * (2 * np.pi)
    angles = noise_labels[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def embedding_mlp(p0, p1, emb):
    return F.silu(dense(p1, F.silu(dense(p0, emb))))


def block(p, x, emb, features, train, dropout, resample_filter, up=False, down=False, attn=False):
    """EDM's UNetBlock as ambient_jax.nets.unet.UNetBlock."""
    s = Scope(p)
    res = dict(up=up, down=down, resample_filter=resample_filter)
    conv0, norm0 = s.next("Conv"), s.next("GroupNorm")
    h = conv(conv0, F.silu(group_norm(norm0, x)), 3, **res)
    shift = dense(s.next("Dense"), emb)
    h = F.silu(group_norm(s.next("GroupNorm"), h + shift[:, :, None, None]))
    h = F.dropout(h, dropout, training=train)
    h = conv(s.next("Conv"), h, 3)
    orig = x
    if features != x.shape[1] or up or down:
        orig = conv(s.next("Conv"), x, 1, **res)
    x = (h + orig) * math.sqrt(0.5)
    if attn:
        x = (attention(p["SelfAttention_0"], x) + x) * math.sqrt(0.5)
    return x


class TorchSongUNet:
    """F(x [B,C,H,W], c_noise [B]) -> [B,C,H,W] with the fields of a SongUNet preset, on the
    tensors of `params` (torch_params of the Flax network)."""

    def __init__(self, params, **fields):
        self.params, self.f = params, fields

    def __call__(self, x, noise_labels, train=False):
        f, p = self.f, self.params["params"]
        top = Scope(p)
        noise_channels = f["model_channels"] * f["channel_mult_noise"]
        emb = noise_embedding(noise_labels, noise_channels, f["embedding_type"])
        emb = embedding_mlp(top.next("Dense"), top.next("Dense"), emb)
        count = iter(range(1000))
        filt = tuple(f["resample_filter"])

        def unet_block(x, features, **kw):
            return block(
                p[f"UNetBlock_{next(count)}"], x, emb, features, train, f["dropout"], filt, **kw
            )

        resolution, aux, skips = x.shape[2], x, []
        for level, mult in enumerate(f["channel_mult"]):
            res = resolution >> level
            if level == 0:
                x = conv(top.next("Conv"), x, 3)
            else:
                x = unet_block(x, x.shape[1], down=True)
                if f["encoder_type"] == "residual":
                    aux_x = conv(
                        top.next("Conv"), aux, 3, down=True, fused=True, resample_filter=filt
                    )
                    x = aux = (x + aux_x) / math.sqrt(2)
            skips.append(x)
            for _ in range(f["num_blocks"]):
                attn = res in f["attn_resolutions"]
                x = unet_block(x, f["model_channels"] * mult, attn=attn)
                skips.append(x)
        for level in reversed(range(len(f["channel_mult"]))):
            res = resolution >> level
            if level == len(f["channel_mult"]) - 1:
                x = unet_block(x, x.shape[1], attn=True)
                x = unet_block(x, x.shape[1])
            else:
                x = unet_block(x, x.shape[1], up=True)
            for idx in range(f["num_blocks"] + 1):
                x = torch.cat([x, skips.pop()], dim=1)
                attn = idx == f["num_blocks"] and res in f["attn_resolutions"]
                x = unet_block(x, f["model_channels"] * f["channel_mult"][level], attn=attn)
        x = F.silu(group_norm(top.next("GroupNorm"), x))
        return conv(top.next("Conv"), x, 3)


def preset_fields(preset):
    _, fields = nets.PRESETS[preset]
    return fields
