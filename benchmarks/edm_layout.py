"""PyTorch networks in the module layout of EDM's `training/networks.py` (Karras et al. 2022;
NVlabs/edm), the reference of tests/test_interop.py and benchmarks/interop_speed.py: the same
parameter and buffer names, shapes and forward math, so that their state dicts are the ones EDM's
snapshots hold, and their outputs are the reference the converted networks are compared with.

Each module pickles the way EDM's `torch_utils.persistence` reduces it: a call of
`torch_utils.persistence._reconstruct_persistent_obj` with the class's source code, name and
state. The preconditioning classes that wrap these networks, and the snapshot writer, are in
edm_precond.py.
"""

import sys
import types

import numpy as np
import torch
from torch.nn.functional import silu

# The module EDM's pickles name; its function would execute the stored source. The reader under
# test must never call it, so calling it fails the test.
_persistence = types.ModuleType("torch_utils.persistence")


def _reconstruct_persistent_obj(meta):
    raise AssertionError("the reader executed a persistent object's source")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
setattr(_persistence, "_reconstruct_persistent_obj", _reconstruct_persistent_obj)
sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
sys.modules["torch_utils.persistence"] = _persistence


class Persistent(torch.nn.Module):
    """Records its constructor's keyword arguments and pickles as EDM's persistent classes do."""

    def __init__(self, **kwargs):
        super().__init__()
        self._init_args = ()
        self._init_kwargs = dict(kwargs)

    def __reduce__(self):
        state = dict(self.__dict__)
        meta = dict(
            type="class",
            version=6,
            module_src="import os\nos.system('echo the source ran')\n",
            class_name=getattr(self, "class_name_in_file", type(self).__name__),
            state=state,
        )
        return (_reconstruct_persistent_obj, (meta,))


def normal(*shape, scale=1.0):
    """Every tensor random (EDM starts some at ~1e-5 or 0, which would hide a wrong mapping)."""
    return torch.nn.Parameter(torch.randn(*shape) * scale)


class Linear(Persistent):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features=in_features, out_features=out_features, bias=bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight = normal(out_features, in_features, scale=in_features**-0.5)
        self.bias = normal(out_features, scale=0.1) if bias else None

    def forward(self, x):
        x = x @ self.weight.t()
        return x + self.bias if self.bias is not None else x


class Conv2d(Persistent):
    def __init__(self, in_channels, out_channels, kernel, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False):  # fmt: skip
        super().__init__(in_channels=in_channels, out_channels=out_channels, kernel=kernel, up=up,
                         down=down, resample_filter=list(resample_filter),
                         fused_resample=fused_resample)  # fmt: skip
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in = in_channels * kernel * kernel
        self.weight = (
            normal(out_channels, in_channels, kernel, kernel, scale=fan_in**-0.5)
            if kernel
            else None
        )
        self.bias = normal(out_channels, scale=0.1) if kernel else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x):
        w, b, f = self.weight, self.bias, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        conv2d, conv_t = torch.nn.functional.conv2d, torch.nn.functional.conv_transpose2d
        if self.fused_resample and self.down and w is not None:
            x = conv2d(x, w, padding=w_pad + f_pad)
            x = conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = conv_t(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                           stride=2, padding=f_pad)  # fmt: skip
            if self.down:
                x = conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                           stride=2, padding=f_pad)  # fmt: skip
            if w is not None:
                x = conv2d(x, w, padding=w_pad)
        return x + b.reshape(1, -1, 1, 1) if b is not None else x


class GroupNorm(Persistent):
    def __init__(self, num_channels, eps=1e-6):
        super().__init__(num_channels=num_channels, eps=eps)
        self.num_groups, self.eps = min(32, num_channels // 4), eps
        self.weight = normal(num_channels, scale=0.3)
        self.bias = normal(num_channels, scale=0.1)
        with torch.no_grad():
            self.weight += 1

    def forward(self, x):
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class UNetBlock(Persistent):
    """EDM's UNetBlock: SongUNet builds it with one head, skip_scale sqrt(1/2), eps 1e-6,
    resample_proj and no adaptive scale; DhariwalUNet with 64 channels per head, skip_scale 1,
    eps 1e-5, adaptive scale (the embedding gives a scale and a shift) and a weightless skip for
    an up/down block of unchanged width."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False,
                 attention=False, num_heads=None, channels_per_head=64, skip_scale=1.0, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True):  # fmt: skip
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, emb_channels=emb_channels, up=up,
            down=down, attention=attention, num_heads=num_heads, skip_scale=skip_scale, eps=eps,
            resample_proj=resample_proj, adaptive_scale=adaptive_scale,
        )  # fmt: skip
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0
        if attention:
            self.num_heads = (
                num_heads if num_heads is not None else out_channels // channels_per_head
            )
        self.skip_scale, self.adaptive_scale = skip_scale, adaptive_scale
        res = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **res)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, **res)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x + params))
        x = self.conv1(x)
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            # per head h, channel c*3 + j of its qkv is channel c of q (j=0), k (1) or v (2)
            q, k, v = (
                self.qkv(self.norm2(x))
                .reshape(x.shape[0] * self.num_heads, x.shape[1] // self.num_heads, 3, -1)
                .unbind(2)
            )
            w = torch.einsum("ncq,nck->nqk", q, k / np.sqrt(k.shape[1])).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = (self.proj(a.reshape(*x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(Persistent):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__(num_channels=num_channels, endpoint=endpoint)
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        freqs = torch.arange(0, self.num_channels // 2, dtype=torch.float32)
        freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
        x = x.ger((1 / self.max_positions) ** freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(Persistent):
    def __init__(self, num_channels, scale=16):
        super().__init__(num_channels=num_channels, scale=scale)
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = x.ger(2 * np.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class SongUNet(Persistent):
    """EDM's SongUNet (DDPM++ and NCSN++) with decoder_type 'standard'."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.10, label_dropout=0,
                 embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1)):  # fmt: skip
        kwargs = dict(locals())
        del kwargs["self"], kwargs["__class__"]
        super().__init__(**kwargs)
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, resample_filter=resample_filter, num_heads=1,
                     skip_scale=np.sqrt(0.5), eps=1e-6, resample_proj=True,
                     adaptive_scale=False)  # fmt: skip
        self.label_dropout = label_dropout
        self.map_noise = (
            PositionalEmbedding(noise_channels, endpoint=True)
            if embedding_type == "positional"
            else FourierEmbedding(noise_channels)
        )
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.enc = torch.nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter,
                        fused_resample=True,
                    )  # fmt: skip
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
        skips = [b.out_channels for n, b in self.enc.items() if "aux" not in n]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux, tmp = None, None
        for name, block in self.dec.items():
            if "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                aux = block(silu(tmp))
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(Persistent):
    """EDM's DhariwalUNet (ADM)."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0):  # fmt: skip
        kwargs = dict(locals())
        del kwargs["self"], kwargs["__class__"]
        super().__init__(**kwargs)
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=64)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
        skips = [b.out_channels for b in self.enc.values()]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
        self.out_norm = GroupNorm(cout, eps=1e-5)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))
