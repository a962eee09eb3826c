"""Our U-Net train step beside the same network and step written in PyTorch, on the same machine
in the same run: the ratio says how fast our compiled step is against eager PyTorch (torch is
a test dependency, CPU build).

    python benchmarks/peer_torch.py                          # ddpmpp_cifar10 b8, ncsnpp_ffhq64 b4
    python benchmarks/peer_torch.py --runs=ddpmpp_cifar10:8 --steps=5
    python benchmarks/peer_torch.py --only_layers          # per layer kind, each preset's shapes

The PyTorch side (`TorchSongUNet`, benchmarks/torch_songunet.py) is written from the architecture
of ambient_jax.nets.unet (EDM's SongUNet, NCHW) and runs on the Flax network's own weights, so it
computes the same function (tests/test_peer.py checks it to 1e-5). One train step on each side:
EDM's preconditioned denoiser, the EDM-weighted denoising loss at log-normal noise levels (the
ambient objective costs the same network calls), backward, Adam and the EMA update; dropout as
the preset says. Prints images/s of both and ours/peer; writes
benchmarks/results/peer_torch_<platform>.json. The per-layer tables (--layers, --only_layers)
time the forward and backward pass of each layer kind at each run's shapes and batch, after
checking that both sides give the same output (1e-4).
"""

import argparse
import os
import time

# Both frameworks share one GPU here: JAX must not take 75% of its memory at start (its default),
# or the peer's first batch-512 step runs out of memory (seen on an H200, 2026-11-30).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import benchlib  # noqa: F401  (the programs' CPU flags, before JAX starts)
import jax
import numpy as np
import step_speed
import torch
import torch.nn.functional as F
from torch_songunet import (
    TorchSongUNet,
    attention,
    conv,
    embedding_mlp,
    fir_down,
    fir_up,
    group_norm,
    noise_embedding,
    preset_fields,
    torch_params,
)

from ambient_jax import nets

# ----------------------------------------------------------------------------- the train step


class TorchStep:
    """One train step of the peer: EDM preconditioning, the EDM-weighted denoising loss at
    log-normal noise levels, backward, Adam (lr 1e-3) and the EMA update (decay 0.999). `bf16`:
    the forward pass under bf16 autocast (parameters, gradients and Adam stay f32, as ours);
    `compile`: the loss through torch.compile."""

    def __init__(self, net, sigma_data=0.5, bf16=False, compile=False):
        self.net, self.sigma_data, self.bf16 = net, sigma_data, bf16
        self.leaves = [t.requires_grad_() for t in jax.tree_util.tree_leaves(net.params)]
        self.ema = [t.detach().clone() for t in self.leaves]
        self.optimizer = torch.optim.Adam(self.leaves, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
        self.loss = torch.compile(self._loss) if compile else self._loss

    def _loss(self, x0, sigma, noise):
        sd = self.sigma_data
        x = x0 + noise * sigma
        total = sigma**2 + sd**2
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x / total.sqrt(), sigma.flatten().log() / 4, train=True)
        denoised = sd**2 / total * x + sigma * sd / total.sqrt() * out.float()
        weight = total / (sigma * sd) ** 2
        return (weight * (denoised - x0) ** 2).sum(dim=(1, 2, 3)).mean()

    def __call__(self, x0):
        sigma = torch.exp(torch.randn(x0.shape[0], device=x0.device) * 1.2 - 1.2)
        loss = self.loss(x0, sigma[:, None, None, None], torch.randn_like(x0))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.leaves, 1 - 0.999)
        return float(loss.detach())


def time_peer(preset, batch, steps, dtype="float32", channels_last=False, compile=False):
    """(seconds per train step of the peer, whether torch.compile was used), on the GPU when
    torch has CUDA. torch.compile is tried when asked and left out, with a printed reason, where
    it fails (e.g. no compiler toolchain)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fields = preset_fields(preset)
    res = step_speed.RESOLUTION[preset]
    model = nets.build_model(preset, 3)
    params = nets.init_params(model, (res, res, 3), jax.random.key(0))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x0 = np.random.RandomState(0).uniform(-1, 1, (batch, 3, res, res))
    x0 = torch.tensor(x0, dtype=torch.float32, device=device).contiguous(memory_format=layout)

    def make(compile):
        weights = jax.tree_util.tree_map(
            lambda t: t.contiguous(memory_format=layout) if t.ndim == 4 else t,
            torch_params(params, device),
        )
        step = TorchStep(
            TorchSongUNet(weights, **fields), bf16=dtype == "bfloat16", compile=compile
        )
        step(x0)  # warm-up (and compilation)
        return step

    try:
        step = make(compile)
    except Exception as error:  # torch.compile's toolchain is missing or fails on this machine
        if not compile:
            raise
        print(f"  torch.compile failed here ({type(error).__name__}); the peer runs eagerly")
        step, compile = make(False), False
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(x0)
    sync()
    return (time.perf_counter() - start) / steps, compile


# ----------------------------------------------------------------------------- per layer kind


def layer_cases(preset, batch):
    """(name, our function (params, *inputs), its parameters or None, inputs NHWC, the torch
    function (params, *inputs) on NCHW) for each layer kind of a SongUNet preset at each
    resolution, at the preset's channel widths: the forward and backward of sum(out * weights)
    are timed on both sides."""
    import flax.linen as nn
    import jax.numpy as jnp

    from ambient_jax.nets import unet

    net = nets.build_model(preset, 3)  # the preset's fields, defaults included
    resolution = step_speed.RESOLUTION[preset]
    filt = tuple(net.resample_filter)
    f_pad = (len(filt) - 1) // 2
    taps = ",".join(str(t) for t in filt)
    widths = [net.model_channels * m for m in net.channel_mult]
    resolutions = [resolution >> level for level in range(len(widths))]
    noise_channels = net.model_channels * net.channel_mult_noise
    emb_channels = net.model_channels * net.channel_mult_emb
    embed = (
        unet.positional_embedding if net.embedding_type == "positional" else unet.fourier_embedding
    )
    cases = []

    class EmbeddingMLP(nn.Module):
        """SongUNet's noise embedding and its 2-layer MLP."""

        @nn.compact
        def __call__(self, noise_labels):
            emb = embed(noise_labels, noise_channels)
            emb = nn.silu(nn.Dense(emb_channels)(emb))  # Dense_0
            return nn.silu(nn.Dense(emb_channels)(emb))  # Dense_1

    def case(name, module, shapes, torch_fn, flax_fn=None):
        inputs = [
            jnp.asarray(np.random.RandomState(i).randn(*s), jnp.float32)
            for i, s in enumerate(shapes)
        ]
        params = module.init(jax.random.key(0), *inputs) if module is not None else None
        if flax_fn is None:
            flax_fn = lambda params, *xs: module.apply(params, *xs)  # noqa: E731
        cases.append((name, flax_fn, params, inputs, torch_fn))

    conv_fn = lambda kernel, **kw: lambda p, x: conv(p["params"], x, kernel, **kw)  # noqa: E731
    for res, c in zip(resolutions, widths):
        x = (batch, res, res, c)
        case(f"3x3 conv {c}->{c} at {res}", unet.Conv(c, 3), [x], conv_fn(3))
        case(
            f"3x3 conv {2 * c}->{c} at {res} (decoder)",
            unet.Conv(c, 3),
            [(batch, res, res, 2 * c)],
            conv_fn(3),
        )
        case(
            f"1x1 skip conv {2 * c}->{c} at {res}",
            unet.Conv(c, 1),
            [(batch, res, res, 2 * c)],
            conv_fn(1),
        )
        norm = unet.group_norm(c)
        case(
            f"GroupNorm+SiLU {c} at {res}",
            norm,
            [x],
            lambda p, x: F.silu(group_norm(p["params"], x)),
            lambda params, x, norm=norm: nn.silu(norm.apply(params, x)),
        )
        case(
            f"skip concatenation 2x{c} at {res}",
            None,
            [x, x],
            lambda p, a, b: torch.cat([a, b], dim=1),
            lambda params, a, b: jnp.concatenate([a, b], axis=-1),
        )
    for level, (res, c) in enumerate(zip(resolutions[:-1], widths)):
        case(
            f"FIR down [{taps}] {c} ch, {res}->{res // 2}",
            None,
            [(batch, res, res, c)],
            lambda p, x: fir_down(x, filt, f_pad),
            lambda params, x: unet.fir_downsample(x, filt, f_pad),
        )
        c_up = widths[level + 1]  # the decoder comes up with the lower level's width
        case(
            f"FIR up [{taps}] {c_up} ch, {res // 2}->{res}",
            None,
            [(batch, res // 2, res // 2, c_up)],
            lambda p, x: fir_up(x, filt, f_pad),
            lambda params, x: unet.fir_upsample(x, filt, f_pad),
        )
        if net.encoder_type == "residual":  # the input branch's conv, then FIR down
            c_in = 3 if level == 0 else widths[level - 1]
            case(
                f"3x3 conv + FIR down {c_in}->{c}, {res}->{res // 2} (residual input)",
                unet.Conv(c, 3, down=True, fused_resample=True, resample_filter=filt),
                [(batch, res, res, c_in)],
                conv_fn(3, down=True, fused=True, resample_filter=filt),
            )
    case(
        f"embedding MLP {noise_channels}->{emb_channels}->{emb_channels}",
        EmbeddingMLP(),
        [(batch,)],
        lambda p, labels: embedding_mlp(
            p["params"]["Dense_0"],
            p["params"]["Dense_1"],
            noise_embedding(labels, noise_channels, net.embedding_type),
        ),
    )
    for res, c in zip(resolutions, widths):
        if res in net.attn_resolutions:
            case(
                f"attention {c} at {res}",
                unet.SelfAttention(c),
                [(batch, res, res, c)],
                lambda p, x: attention(p["params"], x),
            )
    return cases


def _nchw(a):
    """Images NHWC -> NCHW for torch; other arrays as they are."""
    a = np.asarray(a)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def layer_table(preset, batch, repeat=5):
    rows = []
    for name, fn, params, inputs, torch_fn in layer_cases(preset, batch):
        out = fn(params, *inputs)
        w = jax.numpy.asarray(np.random.RandomState(9).randn(*out.shape), out.dtype)
        # value_and_grad, not grad: for a linear layer the gradient needs no forward output, and
        # XLA would drop the forward as dead code while PyTorch computes it.
        grad = jax.jit(
            jax.value_and_grad(
                lambda p, *xs: jax.numpy.sum(fn(p, *xs) * w), argnums=tuple(range(len(inputs) + 1))
            )
        )
        ours = benchlib.timed(lambda: jax.block_until_ready(grad(params, *inputs)), repeat)
        tparams = torch_params(params) if params is not None else None
        if tparams is not None:
            for t in jax.tree_util.tree_leaves(tparams):
                t.requires_grad_()
        txs = [torch.tensor(_nchw(x)).requires_grad_() for x in inputs]
        tw = torch.tensor(_nchw(w))
        # a row only compares equal work: both sides compute the same function
        np.testing.assert_allclose(
            torch_fn(tparams, *txs).detach().numpy(), _nchw(out), rtol=1e-4, atol=1e-4, err_msg=name
        )

        def torch_once():
            for t in txs:
                t.grad = None
            (torch_fn(tparams, *txs) * tw).sum().backward()

        theirs = benchlib.timed(torch_once, repeat)
        rows.append(
            {"layer": name, "ours_ms": ours * 1e3, "peer_ms": theirs * 1e3, "ratio": theirs / ours}
        )
        print(
            f"  {name:52} ours {ours * 1e3:8.2f} ms  peer {theirs * 1e3:8.2f} ms  "
            f"ours/peer {theirs / ours:5.2f}",
            flush=True,
        )
    return rows


# (name, FIR resampling as shifted views, the residual input's padding as a separate pad) on the
# CPU backend: the CPU lowerings of ambient_jax.nets.unet, each added to the one before. Also
# tried, and dropped for no gain: 1x1 convolutions as matmuls over the pixels (ddpmpp b8 1.055 ->
# 1.050 img/s, ncsnpp_ffhq64 b4 0.337 -> 0.336, 2-core AMD EPYC).
LOWERINGS = (
    ("GPU/TPU form: depthwise FIR, padded conv", False, False),
    ("FIR as shifted views", True, False),
    ("and explicit padding (the CPU default)", True, True),
)


def measure_with(preset, batch, steps, shifted, explicit):
    from ambient_jax.nets import unet

    saved = unet.SHIFTED_RESAMPLING_ON_CPU, unet.EXPLICIT_PADDING_ON_CPU
    unet.SHIFTED_RESAMPLING_ON_CPU, unet.EXPLICIT_PADDING_ON_CPU = shifted, explicit
    try:
        return step_speed.measure(preset, batch, "float32", steps)
    finally:
        unet.SHIFTED_RESAMPLING_ON_CPU, unet.EXPLICIT_PADDING_ON_CPU = saved


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--runs", default="ddpmpp_cifar10:8,ncsnpp_ffhq64:4", help="PRESET:BATCH,..."
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
    parser.add_argument(
        "--layers", action="store_true", help="also the per-layer table of each run's preset"
    )
    parser.add_argument(
        "--lowerings",
        action="store_true",
        help="also our step with each CPU lowering of the U-Net added in turn (LOWERINGS)",
    )
    parser.add_argument(
        "--only_layers", action="store_true", help="the per-layer tables alone (no whole steps)"
    )
    parser.add_argument("--dtypes", default="float32", help="float32 and/or bfloat16 (autocast)")
    parser.add_argument(
        "--channels_last", action="store_true", help="the peer's images and kernels NHWC in memory"
    )
    parser.add_argument(
        "--compile", action="store_true", help="the peer's loss through torch.compile"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {
        "device": benchlib.device_description(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "runs": [],
    }
    print(f"{result['device']}; torch {torch.__version__} with {torch.get_num_threads()} threads")
    dtypes = args.dtypes.split(",")
    result["matmul_flops_per_s"] = {d: benchlib.matmul_peak(d) for d in dtypes}
    if args.layers or args.only_layers:
        result["layers"] = []
        for item in args.runs.split(","):
            preset, batch = item.split(":")
            print(f"per layer kind, {preset} shapes at batch {batch}, forward + backward:")
            for row in layer_table(preset, int(batch)):
                result["layers"].append({"preset": preset, "batch": int(batch), **row})
    for item in [] if args.only_layers else args.runs.split(","):
        preset, batch = item.split(":")
        batch = int(batch)
        if args.lowerings:
            for name, shifted, explicit in LOWERINGS:
                r = measure_with(preset, batch, args.steps, shifted, explicit)
                result.setdefault("lowerings", []).append(
                    {
                        "preset": preset,
                        "batch": batch,
                        "lowering": name,
                        "img_s": batch / r["step_s"],
                    }
                )
                print(f"  {name:42} {batch / r['step_s']:.3f} img/s", flush=True)
        for dtype in dtypes:
            ours = step_speed.measure(preset, batch, dtype, args.steps)
            peer_s, compiled = time_peer(
                preset, batch, args.steps, dtype, args.channels_last, args.compile
            )
            peak = result["matmul_flops_per_s"][dtype]
            row = {
                "preset": preset,
                "batch": batch,
                "dtype": dtype,
                "peer_channels_last": args.channels_last,
                "peer_compiled": compiled,
                "ours_img_s": batch / ours["step_s"],
                "peer_img_s": batch / peer_s,
                "ratio": peer_s / ours["step_s"],
                "flops_per_step": ours["flops_per_step"],
                "ours_flops_per_s": ours["flops_per_s"],
                "ours_utilisation": ours["flops_per_s"] / peak,
                "peer_utilisation": ours["flops_per_step"] / peer_s / peak,
                "ours_compile_s": ours["compile_s"],
            }
            result["runs"].append(row)
            setting = ", ".join(
                ["channels-last"] * args.channels_last + ["torch.compile"] * compiled
            )
            print(
                f"{preset} batch {batch} {dtype}: ours {row['ours_img_s']:.2f} img/s, peer "
                f"({setting or 'eager'}) {row['peer_img_s']:.2f} img/s, ours/peer "
                f"{row['ratio']:.2f}; of the {dtype} matmul rate: ours "
                f"{row['ours_utilisation']:.2f}, peer {row['peer_utilisation']:.2f}; our "
                f"compile {row['ours_compile_s']:.0f} s",
                flush=True,
            )
    benchlib.write_results("peer_torch", result)


if __name__ == "__main__":
    main()
