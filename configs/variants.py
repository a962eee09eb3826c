"""The registered variants of the side-by-side studies (`ambient-sweep variants` runs them): each
name -> (objective, overrides, what it tests), trained from CONFIG (unet_*: UNET_CONFIG, unet32_*:
UNET32_CONFIG, config_of) with the BASE settings and then its own overrides. Data only: the
runner, its stages and table are ambient_jax.programs.variant_runs; docs/variants.md,
ambient_quality.md and mixed_quality.md list what each variant measured."""

from ambient_jax.diffusion.losses import gate_ratio

CONFIG = "configs/mnist.py"

# The settings every variant starts from (the previous default of configs/mnist.py), so a
# variant means the same run whatever the default is now; its own overrides come after.
BASE = [
    "--config.loss.sigma_tn=1.5",
    "--config.loss.weighting=rescaled",
    "--config.loss.ambient_fraction=0",
    "--config.model.split_sigma=0",
    "--config.model.split_low_preset=",
    "--config.ema.rampup_ratio=0.05",
]

# name: (objective, overrides, what it tests)
VARIANTS = {
    "ddpm": ("ddpm", [], "plain denoising (reference)"),
    "default": ("ambient", [], "configs/mnist.py's ambient default as it stands"),
    "edm_1.5": ("ambient", ["--config.loss.weighting=edm"], "the paper's EDM weight, sigma_tn 1.5"),
    "rescaled_1.5": (
        "ambient",
        [],
        "rescaled weight, sigma_tn 1.5: the default of configs/mnist.py",
    ),
    "cap4_1.5": ("ambient", ["--config.loss.rescale_cap=4"], "rescaled weight capped at 4"),
    "cap16_1.5": ("ambient", ["--config.loss.rescale_cap=16"], "rescaled weight capped at 16"),
    "switch2_1.5": (
        "ambient",
        ["--config.loss.sigma_switch=2.0"],
        "rescaled, ambient branch from sigma 2.0 (clean below)",
    ),
    "switch3_1.5": (
        "ambient",
        ["--config.loss.sigma_switch=3.0"],
        "rescaled, ambient branch from sigma 3.0 (clean below)",
    ),
    "edm_switch2_1.5": (
        "ambient",
        ["--config.loss.weighting=edm", "--config.loss.sigma_switch=2.0"],
        "EDM weight, ambient branch from sigma 2.0",
    ),
    "rescaled_0.7": ("ambient", ["--config.loss.sigma_tn=0.7"], "rescaled weight, sigma_tn 0.7"),
    "switch1.5_1.0": (
        "ambient",
        ["--config.loss.sigma_tn=1.0", "--config.loss.sigma_switch=1.5"],
        "copies at sigma 1.0, ambient branch from 1.5",
    ),
    "ema_long": (
        "ambient",
        ["--config.ema.rampup_ratio=0.3"],
        "rescaled 1.5, EMA half-life 50 kimg from the start",
    ),
    "normalized_1.5": (
        "ambient",
        ["--config.loss.weighting=normalized"],
        "inverse-variance weight of the ambient rows, sigma_tn 1.5",
    ),
    "normalized_1.5_ema": (
        "ambient",
        ["--config.loss.weighting=normalized", "--config.ema.rampup_ratio=0.3"],
        "inverse-variance weight, EMA half-life 50 kimg from the start",
    ),
    "normalized_frac0.5": (
        "ambient",
        ["--config.loss.weighting=normalized", "--config.loss.ambient_fraction=0.5"],
        "inverse-variance weight, half the rows on the ambient branch",
    ),
    "rescaled_frac0.5": (
        "ambient",
        ["--config.loss.ambient_fraction=0.5"],
        "rescaled weight, half the rows ambient",
    ),
    "split_normalized_frac0.5": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
        ],
        "two networks split at sigma_tn, inverse-variance weight, half the rows ambient",
    ),
    "split_normalized_frac0.5_s3": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
            "--config.loss.sigma_tn=3",
        ],
        "two networks split at sigma_tn 3, inverse-variance weight, half the rows ambient",
    ),
    "split_normalized_frac0.5_s5": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
            "--config.loss.sigma_tn=5",
        ],
        "two networks split at sigma_tn 5, inverse-variance weight, half the rows ambient",
    ),
    "localcnn_normalized_frac0.5": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.model.split_low_preset=local_cnn",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
        ],
        "MLP above sigma_tn 1.5, local CNN below; inverse-variance weight, half the rows ambient",
    ),
    "localcnn_ddpm": (
        "ddpm",
        ["--config.model.split_sigma=1.5", "--config.model.split_low_preset=local_cnn"],
        "plain denoising with the same split network (MLP above 1.5, local CNN below)",
    ),
    "split_rescaled": (
        "ambient",
        ["--config.model.split_sigma=-1"],
        "two networks split at sigma_tn, rescaled weight",
    ),
    "steps6k": (
        "ambient",
        ["--config.train.num_steps=6000"],
        "rescaled 1.5, twice the steps (twice the budget)",
    ),
}

# The U-Net grid (configs/mnist_unet.py): ddpm, and the ambient objective at four sigma_tn with
# the paper's weight ("edm": its code regresses the prediction of x_tn with EDM's weight), the
# rescaled and the inverse-variance weights, and the gate of the group's later code (Ambient
# Diffusion Omni: the EDM weight on the x0 error, i.e. "rescaled", used on the ambient branch only
# for sigma > sigma_tn sqrt(1 + 1 / (s_max - 1)), s_max = 4, here plus a buffer of 0.05).
UNET_CONFIG = "configs/mnist_unet.py"
GATE = gate_ratio(4)  # 1.1547


def weighted(network, weighting, sigma_tn):
    """The ambient variant of `network` (its words: "U-Net", "32x32 U-Net") with one weighting
    and sigma_tn."""
    return (
        "ambient",
        [f"--config.loss.weighting={weighting}", f"--config.loss.sigma_tn={sigma_tn:g}"],
        f"{network}, {weighting} weight, sigma_tn {sigma_tn:g}",
    )


UNET_VARIANTS = {"unet_ddpm": ("ddpm", [], "plain denoising with the digits U-Net (reference)")}
for _s in (0.3, 0.5, 1.0, 1.5):
    for _w in ("edm", "rescaled", "normalized"):
        UNET_VARIANTS[f"unet_{_w}_{_s:g}"] = weighted("U-Net", _w, _s)
    UNET_VARIANTS[f"unet_gate_{_s:g}"] = (
        "ambient",
        [
            "--config.loss.weighting=rescaled",
            f"--config.loss.sigma_tn={_s:g}",
            f"--config.loss.sigma_switch={GATE * _s + 0.05:.4g}",
        ],
        f"U-Net, rescaled weight, sigma_tn {_s:g}, ambient rows only above {GATE:.4g} sigma_tn "
        "+ 0.05",
    )
# sigma_tn above the band where a sample's identity is decided at n = 30 (sigma 1.3-2 there:
# docs/ambient_quality.md, section 6)
for _s in (2.0, 3.0):
    UNET_VARIANTS[f"unet_rescaled_{_s:g}"] = weighted("U-Net", "rescaled", _s)
VARIANTS.update(UNET_VARIANTS)

# The same grid with the four-level U-Net at the digits' own 28x28, padded to 32x32
# (configs/mnist_unet32.py): local for longer relative to the image than the 16x16 one.
UNET32_CONFIG = "configs/mnist_unet32.py"
UNET32_VARIANTS = {
    "unet32" + name[len("unet") :]: (objective, overrides, what.replace("U-Net", "32x32 U-Net"))
    for name, (objective, overrides, what) in UNET_VARIANTS.items()
}
# At 32x32 a sample's identity is decided at twice the sigma (n_eff 1.8 at sigma 3.2 there against
# 1.7 at 1.3 at 16x16: distances between digits grow with the pixel count), so the rows that sit
# above that band as unet_rescaled_2 and _3 sit above 16x16's are sigma_tn 4 and 6.
for _s in (4.0, 6.0):
    UNET32_VARIANTS[f"unet32_rescaled_{_s:g}"] = weighted("32x32 U-Net", "rescaled", _s)
VARIANTS.update(UNET32_VARIANTS)

# Data of mixed quality (Ambient Diffusion Omni in miniature): the 100 clean training digits and
# 3,900 corrupted other digits (1,000 stay held out), noised with std 0.5 or blurred with a
# Gaussian of std 1 pixel. Clean images train every level by plain denoising (objective ddpm);
# corrupted ones only above their sigma_tn, behind the group's gate (switch_ratio 1.1547). Every
# mixed run holds the same 1,000 digits out, the clean-only control too.
MIXED = ["--config.data.corrupt_count=3900", f"--config.loss.switch_ratio={GATE:.4f}"]
NOISE = ["--config.data.corrupt_kind=noise", "--config.data.corrupt_level=0.5"]
BLUR = ["--config.data.corrupt_kind=blur", "--config.data.corrupt_level=1.0"]
ANNOTATION = "{root}/annotations/{kind}.json"  # written by ambient-annotate (docs/mixed_quality.md)


def _mixed(corruption, sigma_tn, *extra):
    """A mixed-quality run: ddpm on the clean digits, the corrupted ones at `sigma_tn`."""
    return "ddpm", [*MIXED, *corruption, f"--config.data.corrupt_sigma_tn={sigma_tn}", *extra]


LOCAL_LOW = (
    f"--config.model.split_sigma={0.5 * GATE:.4f}",
    "--config.model.split_low_preset=local_cnn",
)
MIXED_VARIANTS = {
    name: (*_mixed(*setting), what)
    for name, setting, what in (
        (
            "mixed_clean_only",
            (NOISE, "unused"),
            "ddpm on the 100 clean digits alone (the corrupted ones held out, untrained)",
        ),
        ("noise_as_clean", (NOISE, "clean"), "ddpm on all 4,000, the noised ones as if clean"),
        ("noise_known", (NOISE, "known"), "per-image sigma_tn, the noised ones at their known 0.5"),
        (
            "noise_known_image_first",
            (NOISE, "known", "--config.data.corrupt_sampling=image_first"),
            "per-image sigma_tn, known 0.5, batches drawn image first (a level above the image's)",
        ),
        (
            "noise_known_local_low",
            (NOISE, "known", *LOCAL_LOW),
            "per-image sigma_tn, known 0.5; below the noised digits' boundary (0.577) a local CNN "
            "(9x9 window), the MLP above",
        ),
        (
            "noise_classifier",
            (NOISE, ANNOTATION.format(root="{root}", kind="noise")),
            "per-image sigma_tn, the noised ones annotated by the classifier",
        ),
        ("blur_as_clean", (BLUR, "clean"), "ddpm on all 4,000, the blurred ones as if clean"),
        ("blur_fixed", (BLUR, "2.0"), "per-image sigma_tn, every blurred one at a fixed 2.0"),
        (
            "blur_classifier",
            (BLUR, ANNOTATION.format(root="{root}", kind="blur")),
            "per-image sigma_tn, the blurred ones annotated by the classifier",
        ),
    )
}
VARIANTS.update(MIXED_VARIANTS)

# Ambient Omni's other half (docs/mixed_quality.md, section 5): the target is 100 clean digits of
# classes 0-4 (data.classes; its other 2,400 stay held out), the other images all 2,500 embedded
# digits of classes 5-9, unchanged, each trained only at levels up to its sigma_max. The digits
# U-Net (UNET_CONFIG) at the U-Net study's budget, 1,000 steps of batch 128.
OMNI = [
    "--config.data.classes=(0,1,2,3,4)",
    "--config.data.corrupt_kind=classes",
    "--config.data.corrupt_classes=(5,6,7,8,9)",
    "--config.data.corrupt_count=2500",
    "--config.train.num_steps=1000",
]
OMNI_FIXED_SIGMA_MAX = 0.5  # below the band where a sample's identity is decided (1.3-2)
CROPS = "{root}/annotations/crops.json"  # ambient-annotate --annotate=sigma_max (section 5)


def _omni(objective, sigma_tn_spec, sigma_max, *extra):
    return objective, [
        *OMNI,
        f"--config.data.corrupt_sigma_tn={sigma_tn_spec}",
        f"--config.data.corrupt_sigma_max={sigma_max}",
        *extra,
    ]


OMNI_VARIANTS = {
    name: (*setting, what)
    for name, setting, what in (
        (
            "omni_clean_only",
            _omni("ddpm", "unused", "none"),
            "U-Net, ddpm on the 100 clean digits of 0-4 alone (the 5-9 digits untrained)",
        ),
        (
            "omni_as_target",
            _omni("ddpm", "clean", "none"),
            "U-Net, ddpm on the 100 digits and the 2,500 of 5-9 as if in distribution",
        ),
        (
            "omni_fixed",
            _omni("ddpm", "clean", OMNI_FIXED_SIGMA_MAX),
            f"U-Net, ddpm; the 5-9 digits only below a fixed sigma_max {OMNI_FIXED_SIGMA_MAX:g}",
        ),
        (
            "omni_fixed_0.2",
            _omni("ddpm", "clean", 0.2),
            "U-Net, ddpm; the 5-9 digits only below a fixed sigma_max 0.2 (where omni_fixed's "
            "leakage comes from)",
        ),
        (
            "omni_fixed_share",
            _omni("ddpm", "clean", OMNI_FIXED_SIGMA_MAX, "--config.data.bounded_share=0.5"),
            f"U-Net, ddpm; the 5-9 digits only below a fixed sigma_max {OMNI_FIXED_SIGMA_MAX:g}, "
            "and there half the rows (not their 96%): the target oversampled at low levels",
        ),
        (
            "omni_crops",
            _omni("ddpm", "clean", CROPS),
            "U-Net, ddpm; the 5-9 digits below their crops-classifier sigma_max",
        ),
        (
            "omni_crops_ambient",
            _omni("ambient", "clean", CROPS, "--config.loss.sigma_tn=2"),
            "U-Net, the 5-9 digits below their crops-classifier sigma_max, the 100 digits' high "
            "levels on their fixed noisy copies (rescaled weight, sigma_tn 2): the full recipe",
        ),
    )
}
VARIANTS.update(OMNI_VARIANTS)


def config_of(name: str) -> str:
    """The config file variant `name` trains from."""
    if name in UNET_VARIANTS or name in OMNI_VARIANTS:
        return UNET_CONFIG
    if name in UNET32_VARIANTS:
        return UNET32_CONFIG
    return CONFIG
