"""EDM network snapshots in (ambient_jax.interop): read without running anything they carry, mapped
onto our U-Nets with the same outputs as the PyTorch networks that wrote them, and turned into
work dirs the programs take.

The snapshots are made here (no pretrained file can be downloaded): small networks in EDM's
module layout (benchmarks/edm_layout.py) with every tensor random, pickled as EDM's training loop
pickles them."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch  # a test dependency (CPU build)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import edm_precond  # noqa: E402

from ambient_jax.interop import edm, edm_export, torch_files  # noqa: E402

SMALL = dict(model_type="SongUNet", model_channels=16, channel_mult=(1, 2, 2), num_blocks=1,
             attn_resolutions=(8,), dropout=0.0)  # fmt: skip
NCSNPP = dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
              resample_filter=(1, 3, 3, 1))  # fmt: skip
# ADM at 64 channels: two heads of 64 at 8x8, so the per-head interleaving of qkv is exercised
ADM = dict(model_type="DhariwalUNet", model_channels=64, channel_mult=(1, 2), num_blocks=1,
           attn_resolutions=(8,), dropout=0.0)  # fmt: skip
KINDS = {  # name: (EDM's precond class, its arguments)
    "ddpmpp": ("EDMPrecond", dict(SMALL)),
    "ncsnpp": ("EDMPrecond", dict(SMALL, **NCSNPP)),
    "ddpmpp_augment": ("EDMPrecond", dict(SMALL, augment_dim=9)),
    "ncsnpp_augment": ("EDMPrecond", dict(SMALL, augment_dim=9, **NCSNPP)),
    "ddpmpp_sigma_data": ("EDMPrecond", dict(SMALL, sigma_data=0.6)),  # not 0.5
    "ncsnpp_conditional": ("EDMPrecond", dict(SMALL, label_dim=10, augment_dim=9, **NCSNPP)),
    "adm": ("EDMPrecond", dict(ADM)),
    "adm_conditional": ("EDMPrecond", dict(ADM, label_dim=10)),  # EDM's ImageNet-64 kind
    # EDM's baselines: CIFAR-10 VP (DDPM++) and VE (NCSN++), ImageNet-64 iDDPM (ADM)
    "ddpmpp_vp": ("VPPrecond", dict(SMALL)),
    "ddpmpp_vp_conditional": ("VPPrecond", dict(SMALL, label_dim=10, beta_d=18.0)),
    "ncsnpp_ve": ("VEPrecond", dict(SMALL, **NCSNPP)),
    "ncsnpp_ve_conditional": ("VEPrecond", dict(SMALL, label_dim=10, sigma_max=50.0, **NCSNPP)),
    "adm_iddpm": ("iDDPMPrecond", dict(ADM)),
    "adm_iddpm_conditional": ("iDDPMPrecond", dict(ADM, label_dim=10, augment_dim=9)),
}


# the kinds whose converted work dir samples against EDM's sampler (a 3-step run)
SAMPLED = ["adm", "adm_iddpm_conditional", "ddpmpp_vp_conditional", "ncsnpp_ve"]


def torch_net(kind, seed=0, **changes):
    torch.manual_seed(seed)
    class_name, kwargs = KINDS[kind]
    return getattr(edm_precond, class_name)(16, 1, **dict(kwargs, **changes)).eval()


def write_snapshot(tmp_path, net, name="network-snapshot-000100.pkl"):
    path = str(tmp_path / name)
    edm_precond.snapshot(path, net)
    return path


def converted(path):
    """(our network, its parameters, its preconditioning) for a snapshot file."""
    from ambient_jax.diffusion import precond
    from ambient_jax.nets import build_model

    found = edm.describe(path, torch_files.read(path))
    model = edm.model_overrides(found)
    preconditioning = precond.Precond(
        found["precond_kind"], found["sigma_data"], **found["precond_args"]
    )
    augment = {"augment_dim": found["network_kwargs"]["augment_dim"]}  # (label_dim: overrides)
    out = precond.output_channels(preconditioning, found["channels"])
    network = build_model(model["preset"], out, **augment, **model["overrides"])
    return network, edm.network_params(found, path), preconditioning


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_converted_snapshot_denoises_as_the_torch_network_that_wrote_it(tmp_path, kind):
    """D(x, sigma) at sigma 0.002, 0.5 and 80, and EDM's sampler (a Heun step 80 -> 0.5, then
    the Euler step to 0, on levels rounded as the network's round_sigma does) from the same
    noise: the PyTorch network in EDM's layout against the converted one, to about 1e-5 (the
    SAMPLED kinds' sampler: the work-dir test's 3 steps)."""
    import functools

    import jax.numpy as jnp

    from ambient_jax.diffusion import precond, sampling, schedules

    net = torch_net(kind)
    network, params, preconditioning = converted(write_snapshot(tmp_path, net))
    assert preconditioning.kind == {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve",
                                    "iDDPMPrecond": "iddpm"}[KINDS[kind][0]]  # fmt: skip
    labels = None  # a class-conditional network: one-hot classes 2, 7, 9 on both sides
    if net.label_dim:
        labels = np.eye(net.label_dim, dtype=np.float32)[[2, 7, 9]]
    denoise = precond.network_denoiser(network, params, preconditioning, labels)
    torch_labels = None if labels is None else torch.tensor(labels)
    x = np.random.RandomState(1).randn(3, 1, 16, 16).astype(np.float32)
    to_ours = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
    for sigma in (0.002, 0.5, 80.0):
        s = np.full(3, sigma, np.float32)
        with torch.no_grad():
            want = net(torch.tensor(x), torch.tensor(s), torch_labels).numpy()
        got = np.asarray(denoise(to_ours(x), jnp.asarray(s))).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1, np.abs(want).max()), rtol=0)

    if kind in SAMPLED:  # their sampler is compared with EDM's in the work-dir test below
        return
    t = [float(v) for v in schedules.edm_sigma_grid(2, 0.5, 80.0, 7.0)]  # 80, 0.5, 0
    t = [float(net.round_sigma(torch.tensor(v))) for v in t[:2]] + [0.0]
    with torch.no_grad():  # EDM's edm_sampler, deterministic, two steps
        d = lambda xi, si: (xi - net(xi, torch.full((3,), si), torch_labels)) / si
        x0 = torch.tensor(x) * t[0]
        d0 = d(x0, t[0])
        x1 = x0 + (t[1] - t[0]) * d0
        x1 = x0 + (t[1] - t[0]) * (0.5 * d0 + 0.5 * d(x1, t[1]))
        want = (x1 + (t[2] - t[1]) * d(x1, t[1])).numpy()
    rounding = None
    if preconditioning.kind == "iddpm":
        rounding = functools.partial(precond.round_sigma, preconditioning)
    got = sampling.edm_sampler(
        denoise, to_ours(x), num_steps=2, sigma_min=0.5, sigma_max=80.0, round_sigma=rounding
    )
    scale = max(1, np.abs(want).max())  # random weights: outputs of tens
    np.testing.assert_allclose(
        np.asarray(got).transpose(0, 3, 1, 2), want, atol=2e-5 * scale, rtol=0
    )


def edm_sampler_torch(net, latents, num_steps, labels=None, rho=7.0):
    """EDM's generate.py edm_sampler, deterministic: the grid clipped to the network's range and
    rounded by its round_sigma, Heun steps, Euler into 0."""
    sigma_min, sigma_max = max(0.002, net.sigma_min), min(80.0, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    t = (high + i / (num_steps - 1) * (low - high)) ** rho
    t = torch.cat([net.round_sigma(t.float()), torch.zeros(1)])
    n = latents.shape[0]
    x = latents * t[0]
    with torch.no_grad():
        for k in range(num_steps):
            d = (x - net(x, t[k].repeat(n), labels)) / t[k]
            x_next = x + (t[k + 1] - t[k]) * d
            if k < num_steps - 1:
                d2 = (x_next - net(x_next, t[k + 1].repeat(n), labels)) / t[k + 1]
                x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d2)
            x = x_next
    return x.numpy()


@pytest.mark.parametrize("kind", SAMPLED)
def test_each_precond_and_network_goes_to_a_work_dir_samples_as_edm_and_comes_back(tmp_path, kind):
    """edm.convert writes the precond and its constants into the config; the work dir's network
    samples as EDM's sampler does with the torch network (the grid clipped to the precond's
    levels, iDDPM's rounded to its table), and edm.export writes it back as a state dict that
    EDM's class of the same name loads strictly, with the same outputs."""
    import jax
    import jax.numpy as jnp

    from ambient_jax import checkpoint
    from ambient_jax.configs import mnist
    from ambient_jax.diffusion import precond, sampling
    from ambient_jax.eval import diagnose

    net = torch_net(kind)
    wd = str(tmp_path / "run")
    edm.convert(write_snapshot(tmp_path, net), wd, mnist.get_config(), log=lambda *_: None)
    config, network, params = checkpoint.load_ema_params(wd)
    class_name, kwargs = KINDS[kind]
    preconditioning = precond.from_config(config)
    assert edm_export.precond_class(config) == class_name
    for name in ("beta_d", "sigma_max"):  # the constants the kinds change from EDM's defaults
        if name in kwargs:
            assert getattr(preconditioning, name) == kwargs[name]

    labels = None
    if net.label_dim:
        labels = np.eye(net.label_dim, dtype=np.float32)[[4, 0]]
    latents = np.random.RandomState(3).randn(2, 1, 16, 16).astype(np.float32)
    torch_labels = None if labels is None else torch.tensor(labels)
    want = edm_sampler_torch(net, torch.tensor(latents), 3, torch_labels)
    denoise = precond.network_denoiser(network, params, preconditioning, labels)
    levels = sampling.grid_for("edm_heun", preconditioning)
    got = sampling.edm_sampler(
        denoise, jnp.asarray(latents.transpose(0, 2, 3, 1)), num_steps=3, **levels
    )
    got = np.asarray(got).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=2e-5 * max(1, np.abs(want).max()), rtol=0)

    out = str(tmp_path / "exported.pt")
    edm_export.export(wd, out, log=lambda *_: None)
    args = json.load(open(out + ".json"))
    assert args["class_name"] == class_name
    back = getattr(edm_precond, class_name)(**args["init_kwargs"]).eval()
    back.load_state_dict(torch.load(out), strict=True)
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 7.0])
    with torch.no_grad():
        assert torch.equal(back(x, sigma, torch_labels), net(x, sigma, torch_labels))
    del jax
    if not net.label_dim:  # the per-level diagnosis takes the work dir, through its precond
        result = diagnose.diagnose_run(wd, num_levels=2, max_images=4, log=lambda *_: None)
        assert np.all(np.isfinite(result["err_heldout"])) and len(result["err_heldout"]) == 2


def test_every_tensor_of_the_snapshot_is_used_exactly_once(tmp_path):
    """Each parameter of our network comes from one tensor of the file, each tensor goes to one
    place (the Fourier frequencies to the config, the resampling filters checked against it); a
    tensor left over or missing is refused by name."""
    import jax

    net = torch_net("ncsnpp_augment")
    path = write_snapshot(tmp_path, net)
    found = edm.describe(path, torch_files.read(path))
    params = edm.flax_params(found, path)
    leaves = jax.tree_util.tree_leaves(params)
    constants = [n for n in found["tensors"] if n.endswith(("resample_filter", "freqs"))]
    assert sum(leaf.size for leaf in leaves) == sum(p.numel() for p in net.parameters())
    assert len(leaves) + len(constants) == len(net.state_dict()) == len(found["tensors"])
    ours = np.sort(np.concatenate([np.ravel(leaf) for leaf in leaves]))
    theirs = np.sort(np.concatenate([p.detach().numpy().ravel() for p in net.parameters()]))
    np.testing.assert_array_equal(ours, theirs)  # every value once (all random: no ties)

    extra = dict(found, tensors=dict(found["tensors"], **{"enc.extra.weight": np.zeros(3)}))
    with pytest.raises(edm.SnapshotError, match="its tensor enc.extra.weight .* has no place"):
        edm.flax_params(extra, path)
    tensors = dict(found["tensors"])
    del tensors["dec.8x8_block1.qkv.weight"]
    with pytest.raises(edm.SnapshotError, match="tensor dec.8x8_block1.qkv.weight is missing"):
        edm.flax_params(dict(found, tensors=tensors), path)
    tensors = dict(found["tensors"])
    tensors["enc.8x8_down.conv0.resample_filter"] = torch.ones(1, 1, 2, 2).numpy() / 4
    with pytest.raises(edm.SnapshotError, match="resample_filter is not resample_filter="):
        edm.flax_params(dict(found, tensors=tensors), path)


def test_every_tensor_of_an_adm_iddpm_snapshot_is_used_exactly_once(tmp_path):
    """ADM under iDDPM: each network tensor fills one parameter of ours, the resampling buffers
    of the up/down blocks are checked and the precond's level table u is checked against the one
    its constants give; a left-over, missing or different tensor is refused by name."""
    import jax

    net = torch_net("adm_iddpm_conditional")
    path = write_snapshot(tmp_path, net)
    found = edm.describe(path, torch_files.read(path))
    params = edm.network_params(found, path)
    leaves = jax.tree_util.tree_leaves(params)
    filters = [n for n in found["tensors"] if n.endswith("resample_filter")]
    assert len(filters) == 4  # enc.8x8_down and dec.16x16_up: conv0 and skip
    assert len(leaves) + len(filters) == len(net.model.state_dict()) == len(found["tensors"])
    assert set(net.state_dict()) - {"model." + n for n in found["tensors"]} == {"u"}
    ours = np.sort(np.concatenate([np.ravel(leaf) for leaf in leaves]))
    theirs = np.sort(np.concatenate([p.detach().numpy().ravel() for p in net.parameters()]))
    np.testing.assert_array_equal(ours, theirs)  # every value once (all random: no ties)

    def refused(tensors, says):
        with pytest.raises(edm.SnapshotError, match=says):
            edm.network_params(dict(found, tensors=tensors), path)

    refused(dict(found["tensors"], **{"enc.extra.weight": np.zeros(3)}),
            "its tensor enc.extra.weight .* has no place")  # fmt: skip
    tensors = dict(found["tensors"])
    del tensors["dec.8x8_block1.qkv.weight"]
    refused(tensors, "tensor dec.8x8_block1.qkv.weight is missing")
    tensors = dict(found["tensors"], **{"enc.8x8_down.skip.resample_filter": np.ones((1, 1, 3, 3))})
    refused(tensors, "enc.8x8_down.skip.resample_filter is not the box filter")
    tensors = dict(found["tensors"], **{"out_conv.weight": np.zeros((1, 64, 3, 3))})
    refused(tensors, r"out_conv.weight has shape \(1, 64, 3, 3\), .* takes \(2, 64, 3, 3\)")

    net.u[5] *= 1.01  # the level table its constants do not give
    with pytest.raises(edm.SnapshotError, match="level table u is not the one M=1000"):
        edm.describe(path, torch_files.read(write_snapshot(tmp_path, net, "u.pkl")))


class _RunsACommand:
    """What a malicious weight file holds: unpickling it calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_would_run_a_command_is_refused_and_the_command_does_not_run(tmp_path):
    marker = tmp_path / "the_command_ran"
    evil = tmp_path / "network-snapshot-000000.pkl"
    snapshot = {"ema": _RunsACommand(f"touch {marker}"), "augment_pipe": None}
    evil.write_bytes(pickle.dumps(snapshot))
    with pytest.raises(torch_files.UnsafePickle, match=r"asks to call (posix|os)\.system"):
        torch_files.read(str(evil))
    assert not marker.exists()

    from test_training import cli

    done = cli("convert", "edm", f"--source={evil}", f"--workdir={tmp_path / 'run'}")
    assert done.returncode == 2 and not marker.exists(), done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert "system, which a weight file does not need: refused" in line
    assert not (tmp_path / "run").exists()

    # EDM's own persistence stores each class's source in the file: it is kept as text, never run
    # (benchmarks/edm_layout.py's stand-in of torch_utils.persistence fails the test if called).
    found = torch_files.read(write_snapshot(tmp_path, torch_net("ddpmpp")))
    assert "os.system" in found["ema"].module_src and found["ema"].class_name == "EDMPrecond"


def test_a_torch_save_state_dict_reads_as_its_arrays(tmp_path):
    net = torch_net("ncsnpp")
    state = net.state_dict()
    state["half"] = torch.arange(6, dtype=torch.float16).reshape(2, 3)[:, 1]  # a strided view
    torch.save(state, tmp_path / "weights.pt")
    read = torch_files.read(str(tmp_path / "weights.pt"))
    assert list(read) == list(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(read[name], tensor.numpy())


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda n: setattr(n, "_init_kwargs", dict(n._init_kwargs, sigma_data=-1.0)),
         "its sigma_data is -1.0; it must be > 0"),
        (lambda n: setattr(n.model, "_init_kwargs", dict(n.model._init_kwargs,
                                                         encoder_type="skip")),
         "encoder_type='skip'"),
        (lambda n: setattr(n.model, "_init_kwargs", dict(n.model._init_kwargs,
                                                         decoder_type="skip")),
         "decoder_type='skip'"),
        (lambda n: setattr(n.model, "class_name_in_file", "UNet2DModel"),
         "its network is UNet2DModel; this project converts SongUNet (DDPM++, NCSN++) and "
         "DhariwalUNet (ADM)"),
        (lambda n: setattr(n.model, "_init_kwargs", dict(n.model._init_kwargs, out_channels=2)),
         "its network gives 2 channels for 1-channel images; EDMPrecond takes 1"),
        (lambda n: setattr(n, "class_name_in_file", "PFGMPrecond"),
         "its preconditioning is PFGMPrecond; this project converts EDMPrecond, VPPrecond"),
    ],
)  # fmt: skip
def test_what_a_snapshot_needs_that_this_project_lacks_is_named(tmp_path, change, says):
    net = torch_net("ddpmpp")
    change(net)
    path = write_snapshot(tmp_path, net)
    with pytest.raises(edm.SnapshotError) as error:
        edm.describe(path, torch_files.read(path))
    assert says in str(error.value) and path in str(error.value)


def test_ambient_convert_edm_then_sample_and_eval_take_the_work_dir(tmp_path):
    """Through the programs: the snapshot becomes a work dir (config.json, a checkpoint at step
    0, converted.json), which ambient-sample, ambient-eval and ambient-train (fine-tuning from
    it, configs/finetune_from.py) take; ambient-convert export writes it back as a state dict
    that EDM's layout loads strictly, with the same outputs, and that converts to the same
    weights again; a second conversion into it,
    or into a config whose images are another size, is refused in one line."""
    from test_training import cli

    from ambient_jax import checkpoint
    from ambient_jax.configs import mnist

    net = torch_net("ncsnpp_augment", sigma_data=0.6)  # EDMPrecond's constant goes to the config
    path = write_snapshot(tmp_path, net)
    wd = str(tmp_path / "converted run")
    done = cli("convert", "edm", f"--source={path}", f"--workdir={wd}")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.load(open(os.path.join(wd, "converted.json")))
    assert record["precond"] == "EDMPrecond" and record["network"] == "SongUNet"
    assert record["tensors"] == len(net.state_dict()) and len(record["sha256"]) == 64
    config, network, params = checkpoint.load_ema_params(wd)
    assert config.model.preset == "ncsnpp_cifar10" and config.data.augment_p > 0
    assert config.model.overrides.model_channels == 16 and config.loss.sigma_data == 0.6
    freqs = net.model.map_noise.freqs.numpy()
    np.testing.assert_array_equal(np.float32(config.model.overrides.fourier_freqs), freqs)

    with pytest.raises(edm.SnapshotError, match="already holds a checkpoint: give a new"):
        edm.convert(path, wd, mnist.get_config(), log=lambda *_: None)

    sampled = cli("sample", f"--workdir={wd}", "--num_samples=8")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    samples = np.load(os.path.join(wd, "samples.npz"))["samples"]
    assert samples.shape == (8, 16, 16, 1) and samples.std() > 0
    evaluated = cli("eval", f"--workdir={wd}", "--nofid")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    assert metrics["num_samples"] == 8 and metrics["fd_pixel"] > 0

    # The way back: export, load into the PyTorch network of EDM's layout (strict), same outputs;
    # and the exported state dict converts again to the same weights.
    out = str(tmp_path / "exported" / "ema.pt")
    done = cli("convert", "export", f"--workdir={wd}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    args = json.load(open(out + ".json"))
    assert args["class_name"] == "EDMPrecond" and args["init_kwargs"]["augment_dim"] == 9
    back = edm_precond.EDMPrecond(**args["init_kwargs"]).eval()
    back.load_state_dict(torch.load(out), strict=True)
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 7.0])
    with torch.no_grad():
        assert torch.equal(back(x, sigma), net(x, sigma))
    again_wd = str(tmp_path / "again")  # (reads out.json beside it)
    edm.convert(out, again_wd, mnist.get_config(), log=lambda *_: None)
    import jax

    _, _, params_again = checkpoint.load_ema_params(again_wd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_again, params)

    tuned = str(tmp_path / "tuned")
    small = ["--config.train.num_steps=2", "--config.train.batch_size=8",
             "--config.train.log_every=1", "--config.train.sample_every=2",
             "--config.train.checkpoint_every=2", "--config.train.track_every=0",
             "--config.sample.num_steps=2", "--config.sample.grid_size=2"]  # fmt: skip
    done = cli("train", f"--config=configs/finetune_from.py:{wd}", f"--workdir={tuned}", *small)
    assert done.returncode == 0, done.stderr[-3000:]
    started = json.load(open(os.path.join(tuned, "init.json")))
    assert started["init_from"] == os.path.abspath(wd) and started["step"] == 0

    bigger = mnist.get_config()
    bigger.data.resolution = 32
    with pytest.raises(edm.SnapshotError, match="it makes 16x16x1 images, the config's data are"):
        edm.convert(path, str(tmp_path / "x"), bigger, log=lambda *_: None)
    assert not os.path.exists(tmp_path / "x")


def test_a_truncated_snapshot_is_named_in_one_line(tmp_path):
    path = write_snapshot(tmp_path, torch_net("ddpmpp"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(torch_files.UnreadableFile, match="is not a readable weight file"):
        torch_files.read(path)


def test_a_state_dict_without_its_arguments_and_a_network_without_edms_layout_are_refused():
    with pytest.raises(edm.SnapshotError, match="a state dict needs its constructor's arguments"):
        edm.describe("w.pt", {"model.map_layer0.weight": np.zeros((2, 2), np.float32)})
    from ambient_jax.config import base_config
    from ambient_jax.nets import build_model

    split = build_model("tiny", 1, split_sigma=1.0)
    with pytest.raises(edm.SnapshotError, match="only a single U-Net .* has EDM's layout"):
        edm_export.edm_arguments(base_config(), split)
    kwargs = edm_export.edm_arguments(base_config(), build_model("ncsnpp_cifar10", 3))
    assert kwargs["embedding_type"] == "fourier" and len(kwargs["fourier_freqs"]) == 128


def test_a_class_conditional_snapshot_samples_the_class_asked_for(tmp_path):
    """CIFAR-10-like conditional snapshot: ambient-sample --class=3 draws class 3 (recorded beside
    the samples), without --class each sample's class is drawn uniformly and independently of
    the batching; ambient-train refuses to train it in one line (no class labels fed yet)."""
    from test_training import cli

    from ambient_jax import checkpoint
    from ambient_jax.diffusion import generate

    net = torch_net("ncsnpp_conditional")
    wd = str(tmp_path / "cond")
    done = cli("convert", "edm", f"--source={write_snapshot(tmp_path, net)}", f"--workdir={wd}")
    assert done.returncode == 0, done.stderr[-3000:]
    config, _, _ = checkpoint.load_ema_params(wd)
    assert generate.label_dim(config) == 10
    done = cli("sample", f"--workdir={wd}", "--num_samples=6", "--class=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.load(os.path.join(wd, "samples.npz"))["labels"].tolist() == [3] * 6
    done = cli("sample", f"--workdir={wd}", "--num_samples=6")
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = np.load(os.path.join(wd, "samples.npz"))["labels"]
    assert drawn.tolist() == generate.classes_for(1, 0, 6, 10, None).tolist()
    assert generate.classes_for(1, 2, 4, 10, None).tolist() == drawn[2:].tolist()
    assert len(set(generate.classes_for(1, 0, 200, 10, None).tolist())) == 10
    refused = cli("sample", f"--workdir={wd}", "--class=10")
    assert refused.returncode == 2 and "--class must lie in [0, 10)" in refused.stderr
    from ambient_jax.config import base_config

    with pytest.raises(ValueError, match="this run's network is not class-conditional"):
        generate.check_class(base_config(), 3)
    trained = cli("train", f"--config=configs/finetune_from.py:{wd}", f"--workdir={tmp_path / 't'}")
    assert trained.returncode == 2 and "does not feed class labels yet" in trained.stderr
