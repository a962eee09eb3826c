"""Classifier annotation of corrupted images: the rule that reads a level off the classifier's
curve, a classifier that ranks stronger corruptions higher, and the file a training run reads."""

import json

import numpy as np
from test_training import cli, tiny_config

from ambient_jax.data import annotate, corrupt, load_split
from ambient_jax.training import train


def test_the_level_is_the_lowest_from_which_the_curve_stays_within_epsilon():
    grid = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    p = np.array(
        [
            [1.0, 0.9, 0.54, 0.7, 0.5],  # a dip at 0.4 that does not last: 1.6
            [1.0, 0.8, 0.55, 0.52, 0.49],  # within 0.05 of 1/2 from 0.4 on
            [0.5, 0.5, 0.5, 0.5, 0.5],  # never tellable: the lowest level
            [1.0, 1.0, 1.0, 1.0, 0.9],  # always tellable: the top level
        ]
    )
    np.testing.assert_array_equal(
        annotate.lowest_confused_level(p, grid, epsilon=0.05, window=1), [1.6, 0.4, 0.1, 1.6]
    )
    # a moving average of 3 (edges averaged over 2): row 1 becomes
    # [0.9, 0.783, 0.69, 0.52, 0.505] -> 0.8; row 0 [0.95, 0.813, 0.713, 0.58, 0.6] -> never, 1.6
    np.testing.assert_allclose(
        annotate.lowest_confused_level(p, grid, epsilon=0.05, window=3), [1.6, 0.8, 0.1, 1.6]
    )
    # measured against what clean images get at each level where that is above 1/2 (0.7 at 0.8,
    # 0.6 at 1.6): row 0's 0.7 at 0.8 is then within 0.05, so it is confused from 0.4 on
    clean = np.array([0.0, 0.1, 0.3, 0.7, 0.6])
    np.testing.assert_array_equal(
        annotate.lowest_confused_level(p, grid, 0.05, 1, np.maximum(0.5, clean)),
        [0.4, 0.4, 0.1, 1.6],
    )


def test_the_classifier_annotates_stronger_noise_higher():
    """Digits noised with std 0.1 and 0.8 among the corrupted ones: the classifier puts the
    strong ones higher, and not below their std (the conservative side of the known value)."""
    digits = load_split(tiny_config().data).heldout[:160]
    images = digits[:80]
    noise = corrupt.image_noise(7, np.arange(80), images.shape[1:])
    level = np.where(np.arange(80) < 40, 0.1, 0.8).astype(np.float32)
    corrupted = images + level[:, None, None, None] * noise
    recipe = annotate.Recipe(
        steps=300, batch_size=128, num_levels=16, sigma_min=0.05, sigma_max=10.0
    )
    sigma_tn, summary = annotate.annotate(digits[80:], corrupted, recipe, log=lambda _: None)
    weak, strong = np.median(sigma_tn[:40]), np.median(sigma_tn[40:])
    assert 0.1 <= weak < 0.3 and strong >= 0.8 and strong > 3 * weak, (weak, strong)
    # told apart at the lowest level, not at the highest
    assert summary["mean_p_corrupted"][0] > summary["mean_p_clean"][0] + 0.3
    assert abs(summary["mean_p_corrupted"][-1] - summary["mean_p_clean"][-1]) < 0.05


def test_ambient_annotate_writes_the_file_a_run_trains_on(tmp_path):
    out = str(tmp_path / "fixed.json")
    recipe = [
        "--config.data.n_train=16",
        "--config.data.corrupt_count=24",
        "--config.data.corrupt_kind=blur",
        "--config.data.corrupt_level=0.8",
    ]
    done = cli("annotate", *recipe, "--fixed=1.3", f"--out={out}")
    assert done.returncode == 0, done.stderr
    assert "sigma_tn of 24 images, median 1.3" in done.stdout
    c = tiny_config(**{"train.num_steps": 2, "loss.objective": "ddpm"})
    for flag in recipe:
        field, value = flag[len("--config.data.") :].split("=")
        c.data[field] = type(c.data[field])(value)
    c.data.corrupt_sigma_tn = out
    workdir, logs = str(tmp_path / "run"), []
    train.train(c, workdir, log=logs.append)
    assert (
        "data of mixed quality: 16 clean and 24 corrupted images (blur 0.8), the corrupted at "
        f"sigma_tn 1.3 (median; {out}), batches drawn level_first" in logs
    ), logs
    record = json.load(open(f"{workdir}/corrupted.json"))
    assert record["sigma_tn"] == [1.3] * 24 and not any(record["used_as_clean"])
    assert record["noise_added_to_make_x_tn"] == [1.3] * 24  # a blurred image carries none
    written = json.load(open(out))
    assert sorted(map(int, written["sigma_tn"])) == record["source_indices"]
    assert written["recipe"] == record["recipe"]
    # a config without corrupted images: one line, exit 2
    refused = cli("annotate", f"--out={out}")
    assert refused.returncode == 2 and "has no corrupted images" in refused.stderr
