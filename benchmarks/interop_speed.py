"""What converting an EDM snapshot costs, and sampling the converted network against the PyTorch
network it came from, on this machine in one run.

    python benchmarks/interop_speed.py                  # EDM's DDPM++, NCSN++ and ADM
    python benchmarks/interop_speed.py --batch=4 --steps=18 --kinds=adm   # re-measure one row

For each network at EDM's size (benchmarks/edm_precond.py, random weights; DDPM++ and NCSN++ for
CIFAR-10 with augment_dim 9, ADM for class-conditional ImageNet 64x64 with 1000 classes):
the snapshot's size, the seconds to read it (ambient_jax.interop.torch_files, nothing run) and to
map it (interop.edm), the largest difference of D(x, sigma) at sigma 0.002, 0.5, 80 against the
torch network, and the seconds of one EDM sampler run (--steps Heun steps, --batch images) on each
side after a warm-up. Writes benchmarks/results/interop_<platform>.json and, on a CPU, the table
of docs/interop.md (--table_only: the table again from that JSON).
"""

import argparse
import json
import os
import tempfile
import time

import edm_precond
import jax
import jax.numpy as jnp
import numpy as np
import torch
from mixed_quality_tables import replace_between

from ambient_jax import xla_cpu
from ambient_jax.diffusion import precond, sampling, schedules
from ambient_jax.interop import edm, torch_files
from ambient_jax.nets import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# EDM's train.py --arch=ddpmpp / ncsnpp for CIFAR-10 (network_kwargs), with augment_dim 9
DDPMPP = dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,),
              dropout=0.13, embedding_type="positional", channel_mult_noise=1,
              encoder_type="standard", resample_filter=(1, 1), augment_dim=9)  # fmt: skip
NCSNPP = dict(DDPMPP, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
              resample_filter=(1, 3, 3, 1))  # fmt: skip
# EDM's train.py --arch=adm for ImageNet 64x64 (class-conditional)
ADM = dict(model_type="DhariwalUNet", model_channels=192, channel_mult=(1, 2, 3, 4),
           num_blocks=3, attn_resolutions=(32, 16, 8), dropout=0.1, label_dim=1000)  # fmt: skip
# name: (precond arguments, resolution, channels)
KINDS = {
    "ddpmpp": (dict(DDPMPP, model_type="SongUNet"), 32, 3),
    "ncsnpp": (dict(NCSNPP, model_type="SongUNet"), 32, 3),
    "adm": (ADM, 64, 3),
}


def torch_sampler(net, latents, t, labels=None):
    """EDM's deterministic edm_sampler on the torch network (float32)."""
    with torch.no_grad():
        x = latents * t[0]
        d = lambda xi, si: (xi - net(xi, torch.full((xi.shape[0],), si), labels)) / si
        for i in range(len(t) - 1):
            d0 = d(x, t[i])
            x_next = x + (t[i + 1] - t[i]) * d0
            if i < len(t) - 2:
                x_next = x + (t[i + 1] - t[i]) * (0.5 * d0 + 0.5 * d(x_next, t[i + 1]))
            x = x_next
    return x


def measure(name, batch, steps):
    kwargs, resolution, channels = KINDS[name]
    torch.manual_seed(0)
    net = edm_precond.EDMPrecond(resolution, channels, **kwargs).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "network-snapshot-000000.pkl")
        edm_precond.snapshot(path, net)
        size = os.path.getsize(path)
        start = time.perf_counter()
        snapshot = torch_files.read(path)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        found = edm.describe(path, snapshot)
        params = jax.tree_util.tree_map(jnp.asarray, edm.network_params(found, path))
        map_s = time.perf_counter() - start
    model = edm.model_overrides(found)
    augment = found["network_kwargs"]["augment_dim"]
    network = build_model(model["preset"], channels, augment_dim=augment, **model["overrides"])
    labels = None  # a conditional network: classes 0, 1, ... one-hot
    if net.label_dim:
        labels = np.eye(net.label_dim, dtype=np.float32)[np.arange(batch) % net.label_dim]
    torch_labels = None if labels is None else torch.tensor(labels)
    denoise = precond.network_denoiser(network, params, class_labels=labels)
    x = np.random.RandomState(1).randn(batch, channels, resolution, resolution).astype(np.float32)
    worst = 0.0
    for sigma in (0.002, 0.5, 80.0):
        s = np.full(batch, sigma, np.float32)
        with torch.no_grad():
            want = net(torch.tensor(x), torch.tensor(s), torch_labels).numpy()
        got = np.asarray(denoise(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(s)))
        worst = max(worst, float(np.abs(got.transpose(0, 3, 1, 2) - want).max()))
    ours = jax.jit(lambda z: sampling.edm_sampler(denoise, z, num_steps=steps))
    latents = jnp.asarray(x.transpose(0, 2, 3, 1))
    jax.block_until_ready(ours(latents))  # compile
    start = time.perf_counter()
    jax.block_until_ready(ours(latents))
    ours_s = time.perf_counter() - start
    t = [float(v) for v in schedules.edm_sigma_grid(steps, 0.002, 80.0, 7.0)]
    warm = None if labels is None else torch_labels[:1]
    torch_sampler(net, torch.tensor(x[:1]), t[:3], warm)  # warm-up
    start = time.perf_counter()
    torch_sampler(net, torch.tensor(x), t, torch_labels)
    torch_s = time.perf_counter() - start
    count = sum(p.numel() for p in net.parameters())
    row = dict(network=name, resolution=resolution, parameters=count,
               snapshot_mb=size / 2**20, read_s=read_s, map_s=map_s, max_abs_diff_D=worst,
               batch=batch, steps=steps, sample_s_ours=ours_s, sample_s_torch=torch_s,
               ours_over_torch_speed=torch_s / ours_s)  # fmt: skip
    print(
        f"{name}: {row['parameters'] / 1e6:.1f}M parameters, snapshot {row['snapshot_mb']:.0f} MB; "
        f"read {read_s:.2f} s, mapped {map_s:.2f} s; |D - D_torch| <= {worst:.2e}; "
        f"sampling {batch} images x {steps} steps: ours {ours_s:.1f} s, torch {torch_s:.1f} s "
        f"({row['ours_over_torch_speed']:.2f}x)",
        flush=True,
    )
    return row


def table(record):
    """The markdown table of a run's rows."""
    lines = [
        "| network | parameters | snapshot | read | map | max abs(D - D_torch) "
        "| sampled (images x Heun steps) | ours | torch | torch time / ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['network']} {r.get('resolution', 32)}x{r.get('resolution', 32)} "
            f"| {r['parameters'] / 1e6:.1f}M | {r['snapshot_mb']:.0f} MB "
            f"| {r['read_s']:.2f} s | {r['map_s']:.2f} s | {r['max_abs_diff_D']:.1e} "
            f"| {r['batch']} x {r['steps']} | {r['sample_s_ours']:.0f} s "
            f"| {r['sample_s_torch']:.0f} s | {r['ours_over_torch_speed']:.2f}x |"
        )
    device = f"({record['device']}, torch on {record['torch_threads']} threads)"
    return "\n".join(lines) + f"\n\n{device}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--table_only", action="store_true", help="the doc's table from the JSON")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the rows to (re)measure")
    args = parser.parse_args()
    device = jax.devices()[0]
    out = os.path.join(ROOT, "benchmarks", "results", f"interop_{device.platform}.json")
    if args.table_only:
        record = json.load(open(out))
    else:
        measured = {name: measure(name, args.batch, args.steps) for name in args.kinds.split(",")}
        kept = json.load(open(out))["rows"] if os.path.exists(out) else []
        rows = [measured.pop(r["network"], r) for r in kept] + list(measured.values())
        kind = str(device.device_kind)
        record = dict(device=kind, torch_threads=torch.get_num_threads(), rows=rows)
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {out}")
    if device.platform == "cpu":
        replace_between(os.path.join(ROOT, "docs", "interop.md"), "interop-speed", table(record))


if __name__ == "__main__":
    xla_cpu.use_cpu_flags()
    main()
