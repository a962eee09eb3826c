"""The evaluation: Inception port parity with the real weights, FID, nearest-neighbour search."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import linalg

from ambient_jax.data.sources import load_mnist
from ambient_jax.eval import convert, features, fid, inception, memorization


@pytest.fixture(scope="module")
def inception_params(tmp_path_factory):
    path = convert.convert_inception(
        out=str(tmp_path_factory.mktemp("weights") / "inception.msgpack")
    )
    return convert.load_inception_params(path)


@pytest.fixture(scope="module")
def torch_inception():
    return torch.jit.load(convert.default_inception_source(), map_location="cpu").eval()


def test_inception_port_matches_the_torchscript_network(inception_params, torch_inception):
    x = np.random.RandomState(0).uniform(-1, 1, (2, 3, 299, 299)).astype(np.float32)
    with torch.no_grad():
        ref = torch_inception(torch.from_numpy(x)).numpy()
    out = np.asarray(
        jax.jit(inception.InceptionV3().apply)(
            inception_params, jnp.asarray(x.transpose(0, 2, 3, 1))
        )
    )
    assert out.shape == (2, 2048)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def legacy_resize(images, size=299):
    """TF1 bilinear (src = j * in / out, border clamp), written independently in numpy."""

    def axis(x, ax):
        n = x.shape[ax]
        src = np.arange(size) * n / size
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (src - lo).reshape([-1 if a == ax else 1 for a in range(x.ndim)])
        return np.take(x, lo, ax) * (1 - w) + np.take(x, hi, ax) * w

    return axis(axis(images.astype(np.float64), 1), 2)


@pytest.mark.optimized  # Inception (and DINOv2) on tens of images
def test_fid_of_mnist_subsets_matches_torchscript_features_and_scipy(
    inception_params, torch_inception
):
    images, _ = load_mnist(32)
    a, b = images[:40], images[2500:2540]
    ours = fid.frechet_distance_of(
        features.inception_features(inception_params, a, "edm", batch_size=16),
        features.inception_features(inception_params, b, "edm", batch_size=16),
    )

    def torch_features(x):
        x = legacy_resize(np.repeat(x, 3, -1))
        x = ((x - 128.0) / 128.0).astype(np.float32).transpose(0, 3, 1, 2)
        with torch.no_grad():
            return np.concatenate(
                [
                    torch_inception(torch.from_numpy(x[i : i + 10])).numpy()
                    for i in range(0, len(x), 10)
                ]
            )

    fa, fb = torch_features(a).astype(np.float64), torch_features(b).astype(np.float64)
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    s_a, s_b = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b)
    reference = float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root.real))
    assert reference > 1.0
    np.testing.assert_allclose(ours, reference, rtol=1e-3)


def test_fid_of_a_set_with_itself_is_zero_and_the_square_root_methods_agree():
    rng = np.random.RandomState(0)
    x = rng.randn(500, 16)
    assert fid.frechet_distance_of(x, x) < 1e-8
    for trial in range(5):
        a, b = rng.randn(40, 12), rng.randn(40, 12)
        s1, s2 = a.T @ a / 40 + 1e-3 * np.eye(12), b.T @ b / 40 + 1e-3 * np.eye(12)
        values = [fid.SQRT_METHODS[m](s1, s2) for m in ("eigh", "eigvals", "scipy")]
        np.testing.assert_allclose(values, values[2], rtol=1e-8)


@pytest.mark.parametrize("query_block, ref_block", [(7, 5), (3, 64), (100, 13)])
def test_blocked_nearest_neighbours_equal_brute_force(query_block, ref_block):
    rng = np.random.RandomState(1)
    q, r = rng.randn(23, 10).astype(np.float32), rng.randn(37, 10).astype(np.float32)
    qn, rn = (
        q / np.linalg.norm(q, axis=1, keepdims=True),
        r / np.linalg.norm(r, axis=1, keepdims=True),
    )
    sims, idx = memorization.blocked_topk(
        qn, rn, k=3, metric="cosine", query_block=query_block, ref_block=ref_block
    )
    brute = qn @ rn.T
    np.testing.assert_array_equal(idx, np.argsort(-brute, axis=1)[:, :3])
    np.testing.assert_allclose(sims, np.sort(brute, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    best, nearest = memorization.blocked_topk(
        qn, rn, k=1, query_block=query_block, ref_block=ref_block
    )  # the argmax path
    np.testing.assert_array_equal(nearest[:, 0], np.argmax(brute, axis=1))
    np.testing.assert_allclose(best[:, 0], np.max(brute, axis=1), rtol=1e-5)
    dist, idx = memorization.blocked_topk(
        q, r, k=4, metric="l2", query_block=query_block, ref_block=ref_block
    )
    brute = np.linalg.norm(q[:, None] - r[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], rtol=1e-4, atol=1e-4)


def test_bad_weight_files_are_named(tmp_path):
    truncated = tmp_path / "default_1.pt"
    truncated.write_bytes(open(convert.default_inception_source(), "rb").read()[:10000])
    with pytest.raises(convert.ConversionError, match="not a readable TorchScript"):
        convert.convert_inception(str(truncated), str(tmp_path / "out.msgpack"))
    with pytest.raises(convert.ConversionError, match="ambient-convert inception"):
        convert.load_inception_params(str(tmp_path / "missing.msgpack"))
    (tmp_path / "junk.msgpack").write_bytes(b"\x00junk")
    with pytest.raises(convert.ConversionError):
        convert.load_inception_params(str(tmp_path / "junk.msgpack"))
    assert not os.path.exists(tmp_path / "out.msgpack")


@pytest.mark.optimized  # Inception (and DINOv2) on tens of images
def test_eval_program_adds_fid_and_embedding_memorization_and_resumes_from_cached_features(
    tmp_path, monkeypatch
):
    from safetensors.torch import save_file
    from test_training import tiny_config
    from transformers import Dinov2Config, Dinov2Model

    from ambient_jax import checkpoint
    from ambient_jax.diffusion import generate
    from ambient_jax.eval import evaluate
    from ambient_jax.training import train

    monkeypatch.setattr(convert, "CACHE_DIR", str(tmp_path / "cache"))
    convert.convert_inception()
    workdir = str(tmp_path / "run")
    config = tiny_config(**{"train.num_steps": 2})
    train.train(config, workdir, log=lambda _: None)
    _, model, params = checkpoint.load_ema_params(workdir)
    samples = generate.generate(config, model, params, 8, seed=0, batch_size=8)
    np.savez(str(tmp_path / "samples.npz"), samples=samples)
    torch.manual_seed(0)
    dino = Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=518,
            patch_size=14,
        )
    )
    save_file(
        {k: v.contiguous() for k, v in dino.state_dict().items()},
        str(tmp_path / "dino.safetensors"),
    )

    logs = []
    kwargs = dict(
        options=evaluate.EmbeddingOptions(
            inception_fid=True, dinov2_weights=str(tmp_path / "dino.safetensors"), dinov2_heads=4
        ),
        log=logs.append,
    )
    metrics = evaluate.evaluate_run(workdir, str(tmp_path / "samples.npz"), **kwargs)
    assert metrics["fid_inception_edm"] > 0 and metrics["fd_dinov2"] >= 0
    for space in ("inception", "dinov2"):
        sims = metrics[f"{space}_similarity"]
        assert -1 <= sims["mean"] <= sims["max"] <= 1 + 1e-6
    assert sum("extracting" in line for line in logs) == 6
    assert any("images/s" in line for line in logs)  # progress while extracting
    logs.clear()
    again = evaluate.evaluate_run(workdir, str(tmp_path / "samples.npz"), **kwargs)
    assert not any("extracting" in line for line in logs), "features must come from the cache"
    assert again["fid_inception_edm"] == metrics["fid_inception_edm"]
    # Another run on the same training subset (a sweep's next sigma_tn): only its samples are new.
    shutil.copytree(workdir, str(tmp_path / "run2"), ignore=shutil.ignore_patterns("eval"))
    logs.clear()
    other = evaluate.evaluate_run(str(tmp_path / "run2"), str(tmp_path / "samples.npz"), **kwargs)
    assert [line.split()[1] for line in logs if line.startswith("extracting")] == [
        "inception_edm_samples",
        "dinov2_paper_samples",
    ]
    assert other["fid_inception_edm"] == metrics["fid_inception_edm"]

    # FID against the whole data source: statistics computed once, then read from the cache.
    folder = tmp_path / "imgs"
    from test_training import write_pngs

    write_pngs(str(folder), 20)
    data = tiny_config().data
    data.source, data.path, data.channels = "folder", str(folder), 3
    extract = lambda x, progress=None: features.inception_features(
        convert.load_inception_params(), x, "edm", batch_size=16
    )
    mu, sigma, count = evaluate.dataset_reference_statistics(data, "edm", extract, log=logs.append)
    assert count == 20 and mu.shape == (2048,) and sigma.shape == (2048, 2048)
    cached = evaluate.dataset_reference_statistics(
        data, "edm", lambda x, progress=None: 1 / 0, log=logs.append
    )
    np.testing.assert_array_equal(cached[1], sigma)
    assert "fid_inception_edm" in open(f"{workdir}/eval/report.md").read()


def _digits_split():
    from ambient_jax.config import base_config
    from ambient_jax.data import load_split

    c = base_config()
    c.data.n_train, c.data.resolution = 100, 16
    return load_split(c.data)


def test_noisy_copies_of_training_digits_are_copies_in_the_robust_view_and_reals_are_not():
    """Speckle does not hide a copy: training digits plus noise (clipped to [-1, 1], as samples
    are) are extracted in the noise-robust view although the raw criteria call them new; held-out
    real digits stay at their raw reference level in that view."""
    split = _digits_split()
    train = split.train
    heldout = split.heldout[np.random.RandomState(0).permutation(len(split.heldout))[:1000]]
    flat = lambda x: x.reshape(len(x), -1)
    robust = lambda x: memorization.robust_view(x, memorization.robust_sigma(16))
    rng = np.random.RandomState(1)
    for std, raw_at_most, robust_at_least in ((0.3, 0.05, 0.85), (0.25, 0.6, 0.95)):
        noisy = np.clip(train + std * rng.randn(*train.shape).astype(np.float32), -1, 1)
        raw_rate = memorization.extraction_report(flat(noisy), flat(train), 50)[0].mean()
        robust_rate = memorization.extraction_report(flat(robust(noisy)), flat(robust(train)), 50)[
            0
        ].mean()
        assert raw_rate <= raw_at_most < robust_at_least <= robust_rate, (
            std,
            raw_rate,
            robust_rate,
        )
        _, _, sim = memorization.similarity_report(
            memorization.pixel_embedding(robust(noisy)),
            memorization.pixel_embedding(robust(train)),
            (0.95,),
        )
        assert sim["S>0.95"] > 60
    # Reals never trained on: no more extracted or similar in the robust view than in pixels (+1
    # point)
    raw_rate = memorization.extraction_report(flat(heldout), flat(train), 50)[0].mean()
    robust_rate = memorization.extraction_report(flat(robust(heldout)), flat(robust(train)), 50)[
        0
    ].mean()
    assert robust_rate <= raw_rate + 0.01 and robust_rate < 0.03
    raw_sim = memorization.similarity_report(
        memorization.pixel_embedding(heldout), memorization.pixel_embedding(train), (0.95,)
    )[2]
    robust_sim = memorization.similarity_report(
        memorization.pixel_embedding(robust(heldout)),
        memorization.pixel_embedding(robust(train)),
        (0.95,),
    )[2]
    assert robust_sim["S>0.95"] <= raw_sim["S>0.95"] + 1.0


def test_robust_view_is_the_blur_then_soft_threshold_of_its_definition():
    """tanh(3 * Gaussian blur): a constant image stays tanh(3c); a single bright pixel spreads as
    the normalised Gaussian of 0.5 pixel at 16x16."""
    const = np.full((1, 16, 16, 1), 0.2, np.float32)
    np.testing.assert_allclose(memorization.robust_view(const, 0.5), np.tanh(0.6), rtol=1e-6)
    impulse = np.zeros((1, 16, 16, 1), np.float32)
    impulse[0, 8, 8, 0] = 1.0
    out = (
        np.arctanh(memorization.robust_view(impulse, memorization.robust_sigma(16))[0, :, :, 0])
        / 3.0
    )
    g = np.exp(-(np.arange(-4, 5) ** 2) / (2 * 0.5**2))
    g /= g.sum()
    np.testing.assert_allclose(out[4:13, 4:13], np.outer(g, g), atol=1e-5)
    assert memorization.robust_sigma(32) == 1.0


def test_compare_columns_are_labelled_by_run_dir():
    from ambient_jax.eval import report

    base = {
        "sigma_tn": 1.5,
        "objective": "ambient",
        "fd_pixel": 1.0,
        "median_l2_to_heldout": 1.0,
        "extraction_rate": 0.0,
        "median_l2_to_train": 1.0,
        "pixel_similarity": {"S>0.9": 1.0},
        "heldout_pixel_similarity": {"S>0.9": 1.0},
        "num_samples": 10,
        "num_train": 5,
    }
    runs = [
        dict(base, workdir="/runs/sweep/a"),
        dict(base, workdir="/runs/sweep/b"),
        dict(base, workdir="/q/ddpm", sigma_tn=0.0),
    ]
    header = report.markdown_table(runs).splitlines()[0]
    assert (
        "a (ambient s_tn=1.5)" in header
        and "b (ambient s_tn=1.5)" in header
        and "| ddpm |" in header
    )


def test_a_damaged_feature_cache_is_named_and_computed_again(tmp_path):
    """A truncated features_*.npz (a disk that filled, a copy cut short) is not trusted: the log
    names the file, the features are computed again and the file is rewritten whole."""
    from ambient_jax.eval import evaluate

    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    calls, logged = [], []

    def compute(images_u8, progress):
        calls.append(1)
        return np.ones((len(images_u8), 5), np.float32)

    first = evaluate.cached_features(str(tmp_path), "x", images, compute, logged.append)
    path = tmp_path / "features_x.npz"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    again = evaluate.cached_features(str(tmp_path), "x", images, compute, logged.append)
    np.testing.assert_array_equal(again, first)
    assert len(calls) == 2 and any(f"{path} is damaged" in line for line in logged)
    evaluate.cached_features(str(tmp_path), "x", images, compute, logged.append)
    assert len(calls) == 2  # the rewritten file is read back


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """An atomic write leaves .NAME.tmpPID only while its writer runs: the next write of NAME
    removes those of dead writers and keeps a live one's."""
    import subprocess
    import sys

    from ambient_jax import files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".out.npz.tmp{dead}"
    live = tmp_path / f".out.npz.tmp{os.getppid()}"
    other = tmp_path / f".other.npz.tmp{dead}"  # another file's: not ours to remove
    for path in (stale, live, other):
        path.write_bytes(b"half")
    files.save_npz(str(tmp_path / "out.npz"), a=np.zeros(3))
    assert not stale.exists() and live.exists() and other.exists()
    np.testing.assert_array_equal(files.load_npz(str(tmp_path / "out.npz"))["a"], np.zeros(3))


def test_each_row_of_the_evaluation_reads_the_set_its_definition_names(tmp_path):
    """Distinguishable sets through evaluate_run: samples that are exact copies of the training
    digits, noisy copies of them, and held-out digits. Each row moves as its definition says: the
    sample rows with the samples, the held-out rows (real digits never trained on) not at all, the
    robust rows where the raw ones miss the noisy copies, the distance to held-out images with the
    held-out samples only."""
    from ambient_jax import config as config_lib
    from ambient_jax.data import to_uint8
    from ambient_jax.data.subset import load_split, record_subset
    from ambient_jax.eval import evaluate

    config = config_lib.complete(config_lib.base_config())
    config.data.n_train, config.eval.carlini_k = 50, 10
    split = load_split(config.data)
    config_lib.save_config(str(tmp_path), config)
    record_subset(str(tmp_path), config.data, split.train_indices,
                  len(split.train) + len(split.heldout))  # fmt: skip
    copies = np.concatenate([split.train] * 2)
    noisy = np.clip(copies + 0.25 * np.random.RandomState(0).randn(*copies.shape), -1, 1)
    reals = split.heldout[np.random.RandomState(1).permutation(len(split.heldout))[:100]]
    rows = {}
    for name, samples in (("copies", copies), ("noisy", noisy), ("reals", reals)):
        np.savez(tmp_path / "samples.npz", samples=to_uint8(samples))
        rows[name] = evaluate.evaluate_run(str(tmp_path), log=lambda _: None)
    s95 = lambda m, key: m[key]["S>0.95"]
    copied, speckled, real = rows["copies"], rows["noisy"], rows["reals"]
    for m in (copied, speckled, real):  # held-out rows: reals against the training set, always
        assert m["heldout_extraction_rate"] == 0.0 and m["heldout_robust_extraction_rate"] == 0.0
        assert (
            s95(m, "heldout_pixel_similarity") <= 2
            and s95(m, "heldout_robust_pixel_similarity") <= 2
        )
    assert copied["extraction_rate"] == copied["robust_extraction_rate"] == 100.0
    assert s95(copied, "pixel_similarity") == s95(copied, "robust_pixel_similarity") == 100.0
    assert copied["median_l2_to_train"] < 0.1 < copied["median_l2_to_heldout"]
    # speckle hides the copies from the raw rows only
    assert speckled["extraction_rate"] <= 10 and speckled["robust_extraction_rate"] >= 90
    assert s95(speckled, "pixel_similarity") <= 40 <= 90 <= s95(speckled, "robust_pixel_similarity")
    # held-out digits as samples: nothing copied, at distance 0 from the held-out images
    assert real["extraction_rate"] == real["robust_extraction_rate"] == 0.0
    assert real["median_l2_to_heldout"] == 0.0 < real["median_l2_to_train"]
