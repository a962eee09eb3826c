"""The common base of every experiment config, and config checks / persistence.

Experiment files under configs/ start from `base_config()` and change what they need; every
run writes its full config to `<workdir>/config.json`, and the programs read it back from
there (sampling and evaluation need no --config).
"""

import json
import os

import ml_collections

from ambient_jax import files, nets, parallel
from ambient_jax.checks import need, need_counts, need_each
from ambient_jax.data import augment, corrupt
from ambient_jax.diffusion import losses, precond, sampling
from ambient_jax.training import finetune
from ambient_jax.types import Config

CONFIG_NAME = "config.json"

# Fields that may change when a run is resumed: they steer the loop, not what is learned.
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.steps_per_dispatch",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_every",
    "train.track_every",
    "train.track_sigmas",
    "train.track_samples",
    "sample",
    "eval",
    "parallel",
)


INTERVALS = (
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_every",
    "train.track_every",
)


def base_config() -> Config:
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.source = "mnist"  # mnist (embedded) | folder
    c.data.path = ""  # folder source: a folder of PNG/JPEG images
    c.data.resolution = 16
    c.data.channels = 1
    c.data.n_train = 100
    c.data.subset_seed = 0
    # mnist source: only the digits of these classes (e.g. (7,) or every class but 7); () = all.
    # The source is then these digits alone, in their order in the file: the training subset, the
    # held-out set and every index (the noisy copies' key) are taken among them.
    c.data.classes = ()
    c.data.augment_flip = False  # horizontal flips (off for digits)
    # EDM's augmentation pipeline (data.augment) inside the train step, with its labels fed
    # to the network: each transform's probability is its multiplier times augment_p (0 = off).
    c.data.augment_p = 0.0
    c.data.augment_pipe = "edm"  # edm (geometric, 9 labels) | edm_colour (+ colour, 15 labels)
    # tfds source (data.source = "tfds"): ArrayRecord data read without TensorFlow.
    c.data.tfds_name = ""  # "ambient_image_folder" (ambient-prepare) or a catalog name (cifar10)
    c.data.tfds_data_dir = ""  # default: ~/tensorflow_datasets
    c.data.tfds_split = "train"
    c.data.tfds_image_key = "image"
    # read each batch from the source (grain) instead of holding the subset on device
    c.data.streaming = False
    # Data of mixed quality (ambient_jax.data.corrupt; Daras et al. 2025, Ambient Diffusion Omni):
    # corrupt_count other source images, noised (corrupt_level = the noise's std) or blurred
    # (corrupt_level = the Gaussian's std in pixels), train beside the n_train clean ones, each
    # only above its own sigma_tn: "known" (the noise's level), "clean" (used as if clean), a
    # number (one for all) or the file written by ambient-annotate; "unused" keeps them out of
    # the held-out set without training on them (the clean-only control). 0 = none.
    c.data.corrupt_count = 0
    c.data.corrupt_kind = "noise"  # noise | blur | classes (other digits, unchanged)
    c.data.corrupt_classes = ()  # kind classes: the digits the other images are (e.g. 5-9)
    c.data.corrupt_level = 0.5
    c.data.corrupt_seed = 0
    c.data.corrupt_keep_heldout = 1000  # source images that stay held out for the evaluation
    c.data.corrupt_sigma_tn = "known"
    # Ambient Omni's other half: an image trains only at levels up to its sigma_max, where a
    # denoiser looks at a patch too small to tell it from a target image: "none" (no bound), a
    # number (one for all) or the file of ambient-annotate --annotate=sigma_max (crops classifier)
    c.data.corrupt_sigma_max = "none"
    # Where images with and without a sigma_max are both usable, the share of a level's rows that
    # take one with it; -1 = every usable image equally likely (Omni's way)
    c.data.bounded_share = -1.0
    # How a batch is drawn: level_first (the group's: each row's noise level from the log-normal,
    # then an image usable at it, so every level keeps its share) or image_first (an image, then
    # a level above its boundary: the corrupted images' rows all move to high levels).
    c.data.corrupt_sampling = "level_first"

    c.model = ml_collections.ConfigDict()
    c.model.preset = "mlp_small"  # see ambient_jax.nets.PRESETS
    # Any field of a preset's network, e.g. --config.model.overrides.dropout=0.1. Unset (None) =
    # the preset's own value, so switching model.preset never carries one preset's sizes to another.
    c.model.overrides = ml_collections.ConfigDict(
        {
            name: ml_collections.config_dict.placeholder(kind)
            for name, kind in sorted(nets.override_fields().items())
        }
    )
    # auto: bfloat16 matmuls/convolutions on GPU and TPU (float32 parameters, optimizer and loss),
    # float32 on CPU; or say float32 / bfloat16.
    c.model.compute_dtype = "auto"
    # Two networks split at a noise level (ambient_jax.nets.SplitBySigma): -1 = at the ambient
    # branch's start (for ddpm too), so the high-noise network of an ambient run is trained on the
    # noisy copies alone; 0 = one network.
    c.model.split_sigma = 0.0
    c.model.split_low_preset = ""  # the low-noise network's preset (local_cnn); "" = model.preset
    # The network's preconditioning (ambient_jax.diffusion.precond): edm, the project's; vp, ve or
    # iddpm with their constants (EDM's defaults) for networks trained with those (converted
    # snapshots). edm's sigma_data is loss.sigma_data.
    c.model.precond = ml_collections.ConfigDict(precond.config_defaults())
    # U-Net presets: recompute block activations in the backward pass (large batches)
    c.model.remat = False

    c.loss = ml_collections.ConfigDict()
    c.loss.objective = "ambient"  # ddpm | ambient
    c.loss.sigma_tn = 0.5  # noise level of the fixed noisy copies (VE sigma units)
    c.loss.branch_rule = "paper"  # paper | lecture
    c.loss.weighting = "edm"  # one of losses.WEIGHTING_TABLE (ambient-train --help lists them)
    # Bounded-variance variants of the ambient branch (diffusion.losses): where the ambient
    # branch begins (0 = at sigma_tn, the paper) and a cap on the rescaled factor (0 = none).
    c.loss.sigma_switch = 0.0
    c.loss.rescale_cap = 0.0
    c.loss.ambient_fraction = (
        0.0  # > 0: this share of rows on the ambient branch (0 = the log-normal decides)
    )
    # The gate: the ambient branch begins at max(sigma_switch, sigma_tn * switch_ratio +
    # switch_offset, sigma_tn) (losses.branch_boundary), per image with data of mixed quality
    # (data.corrupt_count > 0, where sigma_switch is 0). The group's gate: switch_ratio =
    # losses.gate_ratio(s_max) = sqrt(1 + 1/(s_max - 1)) = 1.1547 at s_max = 4.
    c.loss.switch_ratio = 1.0
    c.loss.switch_offset = 0.0
    c.loss.p_mean = -1.2
    c.loss.p_std = 1.2
    c.loss.sigma_data = 0.5
    # The fixed noise of S_tn is keyed by (noise_seed, the image's source index) alone: an image's
    # noisy copy is the same in every run, train seed and subset that holds it.
    c.loss.noise_seed = 0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.warmup_kimg = 10.0  # linear warm-up over this many thousand images
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # EDM uses none (the paper's code defaults to 0.01)
    c.optim.grad_clip = 0.0  # global-norm clipping; 0 = off

    # Starting from a trained run (training.finetune; ambient-train --init_from=WORKDIR).
    c.finetune = ml_collections.ConfigDict()
    c.finetune.init_from = ""  # a trained run's work dir: its EMA weights start this run
    c.finetune.keep_optimizer = False  # also its Adam state; False = a fresh optimizer
    c.finetune.keep_ema = False  # the EMA at its full half-life from step 0 (no ramp-up)
    c.finetune.train_above = 0.0  # > 0: train only levels >= this; the trained network below it

    c.ema = ml_collections.ConfigDict()
    c.ema.halflife_kimg = 500.0
    c.ema.rampup_ratio = 0.05  # half-life <= rampup_ratio * images seen (EDM)

    # Intervals (INTERVALS) count steps; 0 turns the periodic action off. Whatever the interval,
    # the last step logs, draws a sample grid and saves a checkpoint (so does a SIGTERM or
    # Ctrl-C); tracking happens only at its interval. Limits (optim.grad_clip, loss.rescale_cap)
    # are off at 0 too.
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128
    c.train.num_steps = 2000
    c.train.seed = 0
    c.train.log_every = 100
    c.train.sample_every = 1000
    c.train.checkpoint_every = 1000
    c.train.steps_per_dispatch = (
        1  # >1: that many steps fused in one lax.scan call (fewer dispatches for small nets)
    )
    c.train.keep_every = (
        0  # also keep every checkpoint whose step divides by this; 0 = the two latest only
    )
    # Memorization tracked during training (training.tracking): every track_every steps (0 =
    # off),
    # the train/held-out denoising gap at track_sigmas and the extraction share of track_samples
    # samples.
    c.train.track_every = 0
    c.train.track_sigmas = (0.2, 1.0, 3.0)
    c.train.track_samples = 64

    c.sample = ml_collections.ConfigDict()
    c.sample.sampler = "edm_heun"  # edm_heun | edm_euler | ddim_vp
    c.sample.num_steps = 18
    c.sample.num_samples = 1000
    c.sample.batch_size = 500
    c.sample.seed = 1
    c.sample.grid_size = 8  # an 8x8 grid PNG

    c.eval = ml_collections.ConfigDict()
    c.eval.thresholds = (0.9, 0.95, 0.98)  # "S > tau" shares of the similarity score
    c.eval.carlini_k = 50

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = "jit"  # jit (over a mesh, the default and the way across hosts) | pmap
    c.parallel.num_devices = 0  # 0 = all visible devices
    # Multi-process jobs: TPU pods, Slurm and Open MPI are detected; elsewhere give these.
    c.parallel.coordinator_address = ""  # e.g. "10.0.0.1:1234"
    c.parallel.num_processes = 1
    c.parallel.process_id = 0
    c.parallel.cpu_collectives = ""  # "gloo" for multi-process runs on CPUs
    return c


def check_config(config: Config) -> None:
    """Raise ValueError naming the field for values the programs cannot run with. Each module
    checks the section it owns (losses, nets, augment, sampling, parallel, data.corrupt); the
    trainer's and the evaluation's sections (train, optim, ema, data, eval) are checked here,
    because their modules import this one."""
    losses.check_config(config.loss, config.finetune.train_above)
    nets.check_config(config.model, config.data.augment_p)
    augment.check_config(config.data)
    sampling.check_config(config.sample)
    parallel.check_config(config.parallel)
    corrupt.check_config(config.data, config.loss)
    finetune.check_config(config.finetune, config.model, config.data)
    need(int(config.train.steps_per_dispatch) >= 1, "train.steps_per_dispatch", "must be >= 1")
    need_counts("train", config.train, ("batch_size", "num_steps"))
    need_counts("eval", config.eval, ("carlini_k",))
    need_counts("data", config.data, ("n_train", "resolution"))
    need(config.optim.lr > 0, "optim.lr", "must be > 0")
    need_each(
        "ema",
        config.ema,
        (
            ("halflife_kimg", lambda v: v > 0, "must be > 0"),
            ("rampup_ratio", lambda v: v >= 0, "must be >= 0 (0 = no ramp-up)"),
        ),
    )
    need_each(
        "optim",
        config.optim,
        (
            ("b1", lambda v: 0 <= v < 1, "must lie in [0, 1)"),
            ("b2", lambda v: 0 <= v < 1, "must lie in [0, 1)"),
            ("eps", lambda v: v > 0, "must be > 0"),
            ("grad_clip", lambda v: v >= 0, "must be >= 0 (0 = off)"),
            ("warmup_kimg", lambda v: v >= 0, "must be >= 0 (0 = off)"),
            ("weight_decay", lambda v: v >= 0, "must be >= 0"),
        ),
    )
    need(config.data.channels in (1, 3), "data.channels", "must be 1 or 3")
    classes = tuple(config.data.classes)
    need(
        not classes or config.data.source == "mnist",
        "data.classes",
        "selects digit classes of the mnist source; set data.classes=() for other sources",
    )
    need(
        all(isinstance(c, int) and 0 <= c <= 9 for c in classes)
        and len(set(classes)) == len(classes),
        "data.classes",
        f"must be distinct digits 0-9, got {classes}",
    )
    need(
        all(0 < t < 1 for t in config.eval.thresholds),
        "eval.thresholds",
        "must lie between 0 and 1",
    )
    # One convention for every interval: a step count, 0 = the periodic action off (the log line,
    # the sample grid and the checkpoint still come at the last step; see INTERVALS).
    for field in INTERVALS:
        section, name = field.split(".")
        need(int(config[section][name]) >= 0, field, "must be >= 0 (0 = off)")
    need(int(config.train.track_samples) >= 0, "train.track_samples", "must be >= 0")
    need(
        len(config.train.track_sigmas) >= 1 and all(s > 0 for s in config.train.track_sigmas),
        "train.track_sigmas",
        "must be one or more noise levels > 0",
    )
    check_streaming(config)


def check_streaming(config: Config) -> None:
    """The rules of data.streaming, all here: a streamed run reads its batches from a tfds
    source one step at a time, so what needs the training images on device is refused."""
    if not config.data.streaming:
        return
    on_device = "needs the training images on device (data.streaming=False)"
    need(
        not int(config.data.corrupt_count),
        "data.corrupt_count",
        f"corrupted images are held with the clean ones: {on_device}",
    )
    need(
        config.data.source == "tfds",
        "data.streaming",
        "reads a tfds source: set data.source=tfds (mnist and folders fit on device)",
    )
    need(config.parallel.mode == "jit", "data.streaming", "needs parallel.mode=jit")
    need(int(config.train.steps_per_dispatch) == 1, "train.steps_per_dispatch", f"> 1 {on_device}")
    need(
        not int(config.train.track_every),
        "train.track_every",
        f"tracking compares the model on training and held-out images: it {on_device}; set "
        "train.track_every=0 for streamed runs",
    )


def effective_sigma_tn(config: Config) -> float:
    """The run's sigma_tn, 0 for the ddpm objective (losses.effective_sigma_tn)."""
    return losses.effective_sigma_tn(config.loss.objective, config.loss.sigma_tn)


def save_config(workdir: str, config: Config) -> None:
    files.write_text_atomic(
        os.path.join(workdir, CONFIG_NAME), config.to_json_best_effort(indent=1, sort_keys=True)
    )


def load_config(workdir: str) -> Config:
    path = os.path.join(workdir, CONFIG_NAME)
    if not files.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: {workdir!r} is not a training work dir (run ambient-train first)"
        )
    # Fields added to the base after the run was made read as their defaults, which reproduce
    # the behaviour the run was trained with.
    config = complete(_tuples(files.read_json(path)))
    try:  # a hand-edited file gets the command line's checks
        check_types(config)
        check_config(config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    return config


def noise_keyed_by_source(workdir: str) -> bool:
    """Whether the run's noisy copies are keyed by (loss.noise_seed, source index). Runs saved
    before loss.noise_seed existed keyed them by train.seed and the image's subset position."""
    saved = files.read_json(os.path.join(workdir, CONFIG_NAME))
    return "noise_seed" in saved.get("loss", {})


def complete(config: Config) -> Config:
    """The config with every field of base_config() it lacks at its default, so that code reads
    every field directly (config files and saved configs may predate a field)."""
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return ml_collections.ConfigDict(_with_defaults(given, base_config().to_dict()))


def _with_defaults(saved, defaults):
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted names of the fields where two configs differ, ignoring RESUMABLE_CHANGES and
    model overrides that restate their preset's own value (configs/mnist.py once wrote them out)."""
    old_flat, new_flat = (
        _without_restated_overrides(_flatten(json.loads(c.to_json_best_effort())))
        for c in (old, new)
    )
    names = sorted(set(old_flat) | set(new_flat))
    changed = [n for n in names if old_flat.get(n) != new_flat.get(n)]
    return [
        n for n in changed if not any(n == r or n.startswith(r + ".") for r in RESUMABLE_CHANGES)
    ]


def _without_restated_overrides(flat):
    _, preset_fields = nets.PRESETS.get(flat.get("model.preset"), (None, {}))
    prefix = "model.overrides."
    return {
        name: value
        for name, value in flat.items()
        if not (
            name.startswith(prefix)
            and _tuples(value) == preset_fields.get(name[len(prefix) :], _MISSING)
        )
    }


_MISSING = object()


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_types(config: Config) -> None:
    """ValueError naming the first field whose value is not of its default's type (an int where a
    float is expected is fine; the command line converts its strings, a saved file does not)."""

    def walk(given, default, prefix):
        for key, value in default.items():
            field = f"{prefix}{key}"
            if key not in given:
                continue
            got = given[key]
            if isinstance(value, dict):
                if isinstance(got, dict):
                    walk(got, value, field + ".")
                continue
            want = type(value)
            ok = (
                value is None
                or isinstance(got, want)
                and not (want is int and isinstance(got, bool))
                or (want is float and isinstance(got, int) and not isinstance(got, bool))
                or (want is tuple and isinstance(got, (tuple, list)))
            )
            if not ok:
                raise ValueError(f"config field {field}: expected {want.__name__}, got {got!r}")

    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    walk(given, base_config().to_dict(), "")
    kinds = nets.override_fields()  # None-valued placeholders above: their types are here
    for name, value in given.get("model", {}).get("overrides", {}).items():
        if value is not None and name in kinds:
            walk({name: value}, {name: kinds[name]()}, "model.overrides.")


def _tuples(tree):
    """JSON lists back to tuples, as the config files write them."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def image_shape(config: Config) -> tuple[int, int, int]:
    return (config.data.resolution, config.data.resolution, config.data.channels)
