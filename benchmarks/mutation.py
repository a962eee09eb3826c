"""Mutation harness: does the test suite catch a wrong formula?

    python benchmarks/mutation.py                 # every mutant
    python benchmarks/mutation.py --only=ema_      # mutants whose name starts with a prefix
    python benchmarks/mutation.py --list           # the mutants, without running anything
    python benchmarks/mutation.py --report=benchmarks/results/mutation.md   # + the verdicts file

Each mutant is one small textual change to one line of the core (a coefficient, a weight, a
reduction, a key, a threshold) and the test selection that must notice it. The harness copies the
tracked files of the repository into a scratch folder once, then for each mutant: applies the
change there, runs the tests that name it first (the `file::test` entries of its selection and
the test that caught it last time, recorded in benchmarks/results/mutation_catchers.json), and
its whole selection (`pytest -x`) only if those pass; restores the file, and prints CAUGHT with
the first failing test or SURVIVED. The project itself is never modified. Opt-in: not part of
launch/test.sh. `--report` writes the verdicts as a table whose header is counted from its rows.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

L, P, S, T, M, E, D = (
    "tests/test_losses.py",
    "tests/test_parallel.py",
    "tests/test_sampling.py",
    "tests/test_training.py",
    "tests/test_mutation_pins.py",
    "tests/test_eval.py",
    "tests/test_diagnose.py",
)
KEYS = (
    "tests/test_training.py::"
    "test_each_step_draws_its_batch_noise_and_dropout_by_the_documented_keys"
)
XLA_CPU = "ambient_jax/xla_cpu.py"
XLA_CPU_TESTS = [
    "tests/test_nets.py::test_cpu_flags_join_the_users_xla_flags",
    "tests/test_nets.py::test_cpu_convolutions_run_in_xla_not_ynnpack",
]
EXPLICIT_PADDING_TEST = (
    "tests/test_nets.py::test_cpu_explicit_padding_of_the_residual_input_conv_is_the_same_function"
)
LOSSES, OBJECTIVE, PRECOND, SCHED, SAMPLING = (
    "ambient_jax/losses.py",
    "ambient_jax/objective.py",
    "ambient_jax/precond.py",
    "ambient_jax/schedules.py",
    "ambient_jax/sampling.py",
)
AUG, A = "ambient_jax/augment.py", "tests/test_augment.py"
TRAIN_STATE, TRAIN_STEP, MEM, FID = (
    "ambient_jax/train_state.py",
    "ambient_jax/train_step.py",
    "ambient_jax/eval/memorization.py",
    "ambient_jax/eval/fid.py",
)

# (name, file, old text, new text, tests that must catch it)
MUTANTS = [
    # losses: weights, coefficients, branch rule, fixed noise, VP forms
    (
        "loss_edm_weight_one",
        LOSSES,
        "return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2",
        "return 1.0 + 0.0 * sigma",
        [L, M],
    ),
    (
        "loss_keep_d_swapped",
        LOSSES,
        "keep_d = jnp.where(noisy, gap / sigma**2, 1.0)",
        "keep_d = jnp.where(noisy, sigma_tn**2 / sigma**2, 1.0)",
        [L],
    ),
    (
        "loss_keep_x_swapped",
        LOSSES,
        "keep_x = jnp.where(noisy, sigma_tn**2 / sigma**2, 0.0)",
        "keep_x = jnp.where(noisy, gap / sigma**2, 0.0)",
        [L],
    ),
    (
        "loss_extra_noise_full_sigma",
        LOSSES,
        "extra = jnp.where(noisy, jnp.sqrt(gap), sigma)",
        "extra = jnp.where(noisy, sigma, sigma)",
        [L],
    ),
    (
        "loss_rescale_power",
        LOSSES,
        "factor = sigma**4 / safe_gap**2",
        "factor = sigma**2 / safe_gap",
        [L],
    ),
    (
        "loss_normalized_variance",
        LOSSES,
        "variance = sigma_tn**2 + sigma_tn**4 / safe_gap",
        "variance = sigma_tn**4 / safe_gap",
        [L],
    ),
    (
        "loss_truncated_branch_swapped",
        OBJECTIVE,
        "jnp.where(above, upper, lower)",
        "jnp.where(above, lower, upper)",
        [L],
    ),
    (
        "loss_ambient_fraction_coin",
        OBJECTIVE,
        "is_ambient = uniform < ambient_fraction",
        "is_ambient = uniform < 0.5",
        [L],
    ),
    (
        "split_routing_inverted",
        "ambient_jax/nets/__init__.py",
        "above = noise_labels >= jnp.log(self.boundary) / 4.0",
        "above = noise_labels >= jnp.log(self.boundary) / 2.0",
        ["tests/test_nets.py"],
    ),
    (
        "diag_effective_square",
        "ambient_jax/eval/diagnose.py",
        "return jnp.exp(2 * lse1 - lse2)",
        "return jnp.exp(lse1 - lse2)",
        [D],
    ),
    (
        "loss_cap_min_to_max",
        LOSSES,
        "factor = jnp.minimum(factor, rescale_cap)",
        "factor = jnp.maximum(factor, rescale_cap)",
        [L],
    ),
    (
        "loss_branch_inverted",
        OBJECTIVE,
        "is_ambient = sigma >= sigma_switch",
        "is_ambient = sigma < sigma_switch",
        [L],
    ),
    (
        "loss_switch_not_floored",
        OBJECTIVE,
        "sigma_switch=max(float(sigma_switch), sigma_tn),",
        "sigma_switch=float(sigma_switch),",
        [L],
    ),
    (
        "loss_fixed_noise_same_for_all",
        LOSSES,
        "draw = lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), image_shape, dtype)",
        "draw = lambda i: jax.random.normal(noise_key, image_shape, dtype)",
        [L],
    ),
    (
        "loss_noisy_copy_variance",
        LOSSES,
        "return x0 + _expand(sigma_tn, x0) * eps",
        "return x0 + _expand(sigma_tn**2, x0) * eps",
        [L],
    ),
    (
        "loss_log_normal_std",
        OBJECTIVE,
        "sigma = jnp.exp(p_mean + p_std * normal)",
        "sigma = jnp.exp(p_mean + normal)",
        [L, M],
    ),
    (
        "loss_vp_coef_h",
        LOSSES,
        "coef_h = jnp.where(noisy, gap / (s**2 * jnp.sqrt(keep)), 1.0)",
        "coef_h = jnp.where(noisy, gap / s**2, 1.0)",
        [L],
    ),
    (
        "loss_vp_scale_x",
        LOSSES,
        "scale_x = jnp.where(noisy, jnp.sqrt((1.0 - s**2) / keep), jnp.sqrt(1.0 - s**2))",
        "scale_x = jnp.sqrt(1.0 - s**2)",
        [L],
    ),
    # precond
    (
        "precond_c_skip",
        PRECOND,
        "c_skip = sigma_data**2 / total",
        "c_skip = sigma**2 / total",
        ["tests/test_schedules.py"],
    ),
    (
        "precond_c_out",
        PRECOND,
        "c_out = sigma * sigma_data / jnp.sqrt(total)",
        "c_out = sigma * sigma_data / total",
        ["tests/test_schedules.py"],
    ),
    (
        "precond_c_in",
        PRECOND,
        "c_in = 1.0 / jnp.sqrt(total)",
        "c_in = 1.0 / total",
        ["tests/test_schedules.py"],
    ),
    (
        "precond_c_noise",
        PRECOND,
        "c_noise = jnp.log(sigma) / 4.0",
        "c_noise = jnp.log(sigma) / 2.0",
        ["tests/test_schedules.py"],
    ),
    # schedules
    (
        "sched_ve_to_vp",
        SCHED,
        "return sigma / jnp.sqrt(1.0 + sigma**2)",
        "return sigma / (1.0 + sigma**2)",
        ["tests/test_schedules.py", L],
    ),
    (
        "sched_vp_s_of_t_half",
        SCHED,
        "return jnp.sqrt(-jnp.expm1(-(0.5 * beta_d * t**2 + beta_min * t)))",
        "return jnp.sqrt(-jnp.expm1(-(beta_d * t**2 + beta_min * t)))",
        ["tests/test_schedules.py", M],
    ),
    (
        "sched_grid_rho",
        SCHED,
        "(sigma_min**inv_rho - sigma_max**inv_rho)) ** rho",
        "(sigma_min**inv_rho - sigma_max**inv_rho)) ** (rho - 1)",
        [S],
    ),
    # samplers
    (
        "sampler_heun_average",
        SAMPLING,
        "(0.5 * d_cur + 0.5 * d_prime)",
        "(0.25 * d_cur + 0.75 * d_prime)",
        [S],
    ),
    (
        "sampler_velocity",
        SAMPLING,
        "return (x - denoise(x, jnp.full((batch,), sigma, x.dtype))) / sigma",
        "return (x - denoise(x, jnp.full((batch,), sigma, x.dtype))) / (2 * sigma)",
        [S],
    ),
    (
        "sampler_latents_unscaled",
        SAMPLING,
        "return jax.lax.fori_loop(0, num_steps, step, latents * sigmas[0])",
        "return jax.lax.fori_loop(0, num_steps, step, latents)",
        [S],
    ),
    (
        "sampler_churn_noise",
        SAMPLING,
        "x = x + sigma_cur * jnp.sqrt(gamma * (2 + gamma)) * s_noise * z",
        "x = x + sigma_cur * jnp.sqrt(gamma) * s_noise * z",
        [S, M],
    ),
    (
        "sampler_churn_gamma",
        SAMPLING,
        "gamma_max = min(s_churn / num_steps, 2**0.5 - 1)",
        "gamma_max = min(s_churn, 2**0.5 - 1)",
        [S, M],
    ),
    (
        "sampler_ddim_eps",
        SAMPLING,
        "eps_hat = (x - jnp.sqrt(1.0 - s_cur**2) * x0_hat) / s_cur",
        "eps_hat = (x - x0_hat) / s_cur",
        [S],
    ),
    (
        "sampler_heun_on_last_step",
        SAMPLING,
        "jax.lax.cond(i < num_steps - 1, correct",
        "jax.lax.cond(i < num_steps, correct",
        [S],
    ),
    # the step's randomness: each draw by its documented key
    (
        "batch_key_ignores_step",
        TRAIN_STEP,
        "return jax.random.fold_in(jax.random.fold_in(step_root, step), STEP_BATCH)",
        "return jax.random.fold_in(step_root, STEP_BATCH)",
        [KEYS],
    ),
    (
        "row_keys_ignore_row",
        TRAIN_STEP,
        "return jax.vmap(lambda b: jax.random.fold_in(k_rows, b))(rows)",
        "return jax.vmap(lambda b: jax.random.fold_in(k_rows, 0 * b))(rows)",
        [KEYS],
    ),
    (
        "dropout_key_is_the_row_key",
        TRAIN_STEP,
        "k_dropout = jax.random.fold_in(step_key, STEP_DROPOUT)",
        "k_dropout = jax.random.fold_in(step_key, STEP_ROWS)",
        [KEYS],
    ),
    # EMA and learning rate
    (
        "ema_decay_inverted",
        TRAIN_STATE,
        "return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))",
        "return 0.5 ** (jnp.maximum(halflife, 1e-8) / batch_size)",
        [M],
    ),
    (
        "ema_rampup_off_by_one",
        TRAIN_STATE,
        "(step + 1) * batch_size * ema_config.rampup_ratio",
        "step * batch_size * ema_config.rampup_ratio + 1",
        [M],
    ),
    (
        "ema_update_swapped",
        TRAIN_STATE,
        "beta * e + (1 - beta) * p",
        "(1 - beta) * e + beta * p",
        [M, T],
    ),
    (
        "lr_warmup_off_by_one",
        TRAIN_STATE,
        "seen = (step + 1) * batch_size",
        "seen = step * batch_size + 1",
        [M],
    ),
    ("lr_no_warmup", TRAIN_STATE, "return optim_config.lr * ramp", "return optim_config.lr", [M]),
    # batch drawing, keys, reductions
    (
        "batch_never_last_image",
        TRAIN_STEP,
        "(batch_size,), 0, num_images)",
        "(batch_size,), 0, num_images - 1)",
        [M],
    ),
    (
        "keys_same_for_every_row",
        TRAIN_STEP,
        "return jax.vmap(lambda b: jax.random.fold_in(k_rows, b))(rows)",
        "return jax.vmap(lambda b: k_rows)(rows)",
        [M],
    ),
    (
        "flip_vertical",
        TRAIN_STEP,
        "return jnp.where(flip[:, None, None, None], x0[:, :, ::-1], x0)",
        "return jnp.where(flip[:, None, None, None], x0[:, ::-1], x0)",
        [M],
    ),
    (
        "pmap_psum_grads",
        TRAIN_STEP,
        "grads = jax.lax.pmean(grads, axis_name)",
        "grads = jax.lax.psum(grads, axis_name)",
        [f"{P}::test_same_numbers_on_any_device_count_and_mode"],
    ),
    (
        "pmap_psum_loss",
        TRAIN_STEP,
        "loss = jax.lax.pmean(loss, axis_name)",
        "loss = jax.lax.psum(loss, axis_name)",
        [f"{P}::test_same_numbers_on_any_device_count_and_mode"],
    ),
    (
        "batch_loss_sum",
        TRAIN_STEP,
        "return jnp.mean(per_row), (per_row, aux)",
        "return jnp.sum(per_row), (per_row, aux)",
        [M],
    ),
    (
        "metric_loss_ambient_denominator",
        TRAIN_STEP,
        '"loss_ambient": sums["ambient"] / jnp.maximum(sums["n_ambient"], 1.0)',
        '"loss_ambient": sums["ambient"] / batch_size',
        [M],
    ),
    (
        "noise_key_purpose",
        LOSSES,
        "return jax.random.fold_in(jax.random.key(loss_config.noise_seed), KEY_NOISE_TN)",
        "return jax.random.fold_in(jax.random.key(loss_config.noise_seed), 1)",
        [M],
    ),
    (
        "noise_ignores_noise_seed",
        LOSSES,
        "return jax.random.fold_in(jax.random.key(loss_config.noise_seed), KEY_NOISE_TN)",
        "return jax.random.fold_in(jax.random.key(0), KEY_NOISE_TN)",
        [M, f"{T}::test_noisy_copies_belong_to_the_image"],
    ),
    (
        "noise_keyed_by_subset_position",
        TRAIN_STEP,
        "return tuple(a[positions] for a in held[:5])",
        "return (held[0][positions], positions, *(a[positions] for a in held[2:5]))",
        [M, f"{T}::test_noisy_copies_belong_to_the_image"],
    ),
    # data of mixed quality: a corrupted row's redrawn level, a batch drawn for its rows' levels
    (
        "per_image_redraw_whole_tail",
        OBJECTIVE,
        "redrawn = _redraw_above(normal, jnp.maximum(boundary, 1e-6), p_mean, p_std)",
        "redrawn = _truncated_log_normal(normal, True, jnp.maximum(boundary, 1e-6), p_mean, p_std)",
        [f"{L}::test_a_corrupted_image_trains_only_above_its_level_on_itself"],
    ),
    (
        "corrupted_x_tn_lacks_its_noise",
        TRAIN_STEP,
        "if copy_noise is None:  # a clean image's copy at its own level",
        "if True:  # a clean image's copy at its own level",
        ["tests/test_corrupt.py::test_a_corrupted_images_x_tn_carries_the_noise_it_lacks"],
    ),
    (
        "level_first_ignores_the_level",
        TRAIN_STEP,
        'usable = jnp.maximum(jnp.searchsorted(held[5], row_sigma, side="right"), 1)',
        "usable = jnp.full(row_sigma.shape, held[5].shape[0], jnp.int32)",
        [f"{P}::test_a_batch_drawn_level_first_takes_each_row_from_the_images_usable_at_its_level"],
    ),
    # memorization criteria and FID
    ("mem_no_centring", MEM, "x = x - x.mean(axis=1, keepdims=True)", "x = x", [E, M]),
    (
        "mem_no_normalisation",
        MEM,
        "return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)",
        "return x",
        [E, M],
    ),
    (
        "carlini_half",
        MEM,
        "extracted = dist[:, 0] < dist.mean(axis=1) / 3.0",
        "extracted = dist[:, 0] < dist.mean(axis=1) / 2.0",
        [E, M],
    ),
    (
        "carlini_k_halved",
        MEM,
        "k = max(1, min(k, len(train_flat) - 1))",
        "k = max(1, min(k // 2, len(train_flat) - 1))",
        [E, M],
    ),
    (
        "similarity_threshold_loose",
        MEM,
        "float(100 * np.mean(sims > t))",
        "float(100 * np.mean(sims > t - 0.01))",
        [E, M],
    ),
    ("robust_no_threshold", MEM, "return np.tanh(ROBUST_GAIN * blurred)", "return blurred", [E]),
    (
        "robust_blur_wider",
        MEM,
        "return 0.5 * resolution / 16.0",
        "return 1.0 * resolution / 16.0",
        [E],
    ),
    (
        "fid_factor_2",
        FID,
        "- 2.0 * SQRT_METHODS[method](sigma1, sigma2)",
        "- 1.0 * SQRT_METHODS[method](sigma1, sigma2)",
        [E],
    ),
    (
        "fid_cov_ddof",
        FID,
        "np.cov(x, rowvar=False, ddof=1)",
        "np.cov(x, rowvar=False, ddof=0)",
        [E, M],
    ),
    (
        "fid_sqrt_unclipped_root",
        FID,
        "return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T",
        "return (vectors * np.clip(values, 0, None)) @ vectors.T",
        [E],
    ),
    # Inception and DINOv2 preprocessing
    (
        "inception_scale",
        "ambient_jax/eval/inception.py",
        "return (x - 128.0) / 128.0",
        "return (x - 127.5) / 127.5",
        [E, M],
    ),
    (
        "inception_half_pixel",
        "ambient_jax/eval/inception.py",
        "src = jnp.arange(out_size, dtype=jnp.float32) * (in_size / out_size)",
        "src = jnp.maximum((jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (in_size / out_size) "
        "- 0.5, 0.0)",
        [E, M],
    ),
    (
        "dinov2_unit_range",
        "ambient_jax/eval/dinov2.py",
        "x = jnp.asarray(images_uint8, jnp.float32) / 255.0",
        "x = jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0",
        ["tests/test_dinov2.py"],
    ),
    (
        "dinov2_pad_edge",
        "ambient_jax/eval/dinov2.py",
        '(pw // 2, pw - pw // 2), (0, 0)), mode="reflect"',
        '(pw // 2, pw - pw // 2), (0, 0)), mode="edge"',
        ["tests/test_dinov2.py"],
    ),
    # theory: tau and the label-memorization estimator
    (
        "tau_exponent",
        "ambient_jax/theory/longtail.py",
        "logsumexp(base + log_a[None, :], axis=1)",
        "logsumexp(base + 2 * log_a[None, :], axis=1)",
        ["tests/test_theory.py"],
    ),
    (
        "labelmem_no_out_term",
        "ambient_jax/theory/label_memorization.py",
        "return p_in - p_out, stderr",
        "return p_in, stderr",
        ["tests/test_theory.py"],
    ),
    (
        "labelmem_stderr",
        "ambient_jax/theory/label_memorization.py",
        "stderr = np.sqrt(p_in * (1 - p_in) / k_in + p_out * (1 - p_out) / k_out)",
        "stderr = np.sqrt(p_in * (1 - p_in) / k_in)",
        ["tests/test_theory.py", M],
    ),
    # the per-sigma diagnosis and tracking
    (
        "diag_softmax_temperature",
        "ambient_jax/eval/diagnose.py",
        "scale = 1.0 / (2.0 * variance)[:, None]",
        "scale = 1.0 / variance[:, None]",
        [D],
    ),
    (
        "diag_memorizing_variance",
        "ambient_jax/eval/diagnose.py",
        "posterior_mean(x, train, sigma**2, ref_block)",
        "posterior_mean(x, train, sigma, ref_block)",
        [D],
    ),
    (
        "diag_noisy_copy_solve",
        "ambient_jax/eval/diagnose.py",
        "return (expand(sigma**2) * expected - sigma_tn**2 * x) / expand(gap)",
        "return (expand(sigma**2) * expected - sigma_tn**2 * x) / expand(sigma**2)",
        [D],
    ),
    (
        "diag_gap_sign",
        "ambient_jax/eval/diagnose.py",
        '"gap": (err_heldout - err_train).tolist()',
        '"gap": (err_train - err_heldout).tolist()',
        [D],
    ),
    ("track_gap_sign", "ambient_jax/tracking.py", "float(h - t)", "float(t - h)", [D]),
    # EDM's augmentation pipeline, the step's use of it, and the CPU resampling
    (
        "aug_yflip_flips_width",
        AUG,
        "image = jnp.where(flip, image[::-1], image)",
        "image = jnp.where(flip, image[:, ::-1], image)",
        [A],
    ),
    (
        "aug_translate_int_sign",
        AUG,
        "jnp.mod(jnp.arange(w) - tx, 2 * w - 2)",
        "jnp.mod(jnp.arange(w) + tx, 2 * w - 2)",
        [A],
    ),
    (
        "aug_scale_not_inverted",
        AUG,
        "g_inv = g_inv @ _scale2d(1 / s, 1 / s)",
        "g_inv = g_inv @ _scale2d(s, s)",
        [A],
    ),
    (
        "aug_rotate_direction",
        AUG,
        "g_inv = g_inv @ _rotate2d(theta)  # EDM",
        "g_inv = g_inv @ _rotate2d(-theta)  # EDM",
        [A],
    ),
    (
        "aug_aniso_label_swapped",
        AUG,
        "jnp.stack([z * jnp.cos(r), z * jnp.sin(r)])",
        "jnp.stack([z * jnp.sin(r), z * jnp.cos(r)])",
        [A],
    ),
    (
        "aug_brightness_std",
        AUG,
        "b = z * pipe.brightness_std",
        "b = z * pipe.brightness_std * 2",
        [A],
    ),
    (
        "aug_contrast_base",
        AUG,
        "c = jnp.exp2(z * pipe.contrast_std)",
        "c = jnp.exp(z * pipe.contrast_std)",
        [A],
    ),
    (
        "aug_copy_not_augmented",
        TRAIN_STEP,
        "return out[:n], out[n:], {",
        "return out[:n], x_tn, {",
        [A],
    ),
    (
        "fir_shifted_up_taps",
        "ambient_jax/nets/unet.py",
        "taps = [2 * t for t in _taps(resample_filter)]",
        "taps = [t for t in _taps(resample_filter)]",
        ["tests/test_nets.py"],
    ),
    (
        "explicit_padding_one_sided",
        "ambient_jax/nets/unet.py",
        "x = jnp.pad(x, ((0, 0), (f_pad, f_pad), (f_pad, f_pad), (0, 0)))",
        "x = jnp.pad(x, ((0, 0), (2 * f_pad, 0), (f_pad, f_pad), (0, 0)))",
        [EXPLICIT_PADDING_TEST],
    ),
    (
        "explicit_padding_off_on_cpu",
        "ambient_jax/nets/unet.py",
        'return EXPLICIT_PADDING_ON_CPU and jax.default_backend() == "cpu"',
        "return False",
        [EXPLICIT_PADDING_TEST],
    ),
    # the programs' CPU flags (ambient_jax.xla_cpu)
    (
        "xla_cpu_flag_value",
        XLA_CPU,
        '"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"',
        '"xla_cpu_experimental_ynn_fusion_type": "-individual_dot"',
        XLA_CPU_TESTS,
    ),
    (
        "xla_cpu_user_flag_wins",
        XLA_CPU,
        "for flag, value in CPU_FLAGS.items() if flag not in present]",
        "for flag, value in CPU_FLAGS.items()]",
        XLA_CPU_TESTS,
    ),
    (
        "xla_cpu_release_gate",
        XLA_CPU,
        "if jaxlib_release(jaxlib_version) not in JAXLIB_RELEASES:",
        "if jaxlib_release(jaxlib_version) < (0, 10):",
        XLA_CPU_TESTS,
    ),
]


def scratch_copy():
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    listed += (
        subprocess.run(
            ["git", "ls-files", "-z", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    scratch = tempfile.mkdtemp(prefix="ambient_mutation_")
    for name in filter(None, listed):
        if not os.path.isfile(os.path.join(ROOT, name)):
            continue
        os.makedirs(os.path.dirname(os.path.join(scratch, name)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), os.path.join(scratch, name))
    return scratch


def run_tests(scratch, tests, timeout):
    env = dict(os.environ, PYTHONPATH=scratch, JAX_PLATFORMS="cpu")
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(
            argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, "timeout"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
    return result.returncode, (failed[0] if failed else "")


CATCHERS = os.path.join(ROOT, "benchmarks", "results", "mutation_catchers.json")


def first_stage(tests, caught_before):
    """The tests that name a mutant: its selection's `file::test` entries and the test that
    caught it last time (when that test still lies in its selection's files)."""
    named = [t for t in tests if "::" in t]
    files_ = {t.split("::")[0] for t in tests}
    if caught_before and caught_before.split("::")[0] in files_ and caught_before not in named:
        named.append(caught_before)
    return named


def verdict(scratch, tests, caught_before, timeout):
    """(exit code or None on a timeout, first failing test, which stage decided): the tests that
    name the mutant, then, only if they all pass, its whole selection."""
    named = first_stage(tests, caught_before)
    if named:
        code, failure = run_tests(scratch, named, timeout)
        if code == 1 or (code == 0 and named == tests):  # 1: a test failed
            return code, failure, "named"
        # 0: they passed; otherwise a named test no longer exists (pytest's 4 and 5) or the run
        # broke, and neither is a verdict: the whole selection decides
    code, failure = run_tests(scratch, tests, timeout)
    return code, failure, "selection"


def write_report(path, results):
    """The verdicts as markdown; the header's counts come from the rows below it."""
    caught = sum(r["verdict"] == "caught" for r in results)
    lines = [
        f"# Mutation harness verdicts (benchmarks/mutation.py), {datetime.date.today()}",
        "",
        f"{len(results)} mutants run, {caught} caught ({100 * caught / max(len(results), 1):.0f}%),"
        f" {sum(r['seconds'] for r in results) / 60:.1f} minutes in all. The seconds are each"
        " mutant's wall time on this machine (both stages).",
        "",
        "| # | mutant | verdict | catching test | stage | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"| {i} | {r['name']} | {r['verdict']} | {r['failure'] or '-'} | {r['stage']} | "
            f"{r['seconds']:.0f} |"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="run the mutants whose name starts with this prefix"
    )
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--skip", type=int, default=0, help="start after this many mutants (resume a partial run)"
    )
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--report", default="", help="write the verdicts as markdown here")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if m[0].startswith(args.only)][args.skip :]
    for name, path, old, _, _ in chosen:  # every change must apply to exactly one place
        count = open(os.path.join(ROOT, path)).read().count(old)
        if count != 1:
            sys.exit(f"error: mutant {name}: the text to change occurs {count} times in {path}")
    if args.list:
        for name, path, _, _, tests in chosen:
            print(f"{name:34s} {path:40s} {' '.join(tests)}")
        return
    scratch = scratch_copy()
    env = dict(os.environ, PYTHONPATH=scratch)
    where = subprocess.run(
        [sys.executable, "-c", "import ambient_jax; print(ambient_jax.__file__)"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(scratch):
        sys.exit(
            f"error: the scratch copy is not the one imported ({where}); uninstall other copies "
            "of ambient_jax"
        )
    catchers = json.load(open(CATCHERS)) if os.path.exists(CATCHERS) else {}
    results = []
    try:
        for name, path, old, new, tests in chosen:
            target = os.path.join(scratch, path)
            original = open(target).read()
            if original.count(old) != 1:
                sys.exit(
                    f"error: mutant {name}: the text to change occurs {original.count(old)} times "
                    f"in {path}"
                )
            with open(target, "w") as f:
                f.write(original.replace(old, new))
            start = time.perf_counter()
            try:
                code, first_failure, stage = verdict(
                    scratch, tests, catchers.get(name), args.timeout
                )
            finally:
                with open(target, "w") as f:
                    f.write(original)
            seconds = time.perf_counter() - start
            if code is None:  # not a verdict: the selection did not finish
                result = "timeout"
                print(
                    f"TIMEOUT  {name:34s} ({seconds:.0f} s; {' '.join(tests)}): not counted as "
                    "caught",
                    flush=True,
                )
            elif code == 0:
                result = "survived"
                print(f"SURVIVED {name:34s} ({seconds:.0f} s; {' '.join(tests)})", flush=True)
            elif code != 1:  # pytest could not run the selection (a usage error, no tests)
                result = "error"
                print(f"ERROR    {name:34s} (pytest exit {code}; {' '.join(tests)})", flush=True)
            else:
                result = "caught"
                if first_failure:
                    catchers[name] = first_failure
                print(
                    f"CAUGHT   {name:34s} by {first_failure or code} ({stage} tests, "
                    f"{seconds:.0f} s)",
                    flush=True,
                )
            results.append(
                dict(
                    name=name,
                    verdict=result,
                    failure=first_failure if result == "caught" else "",
                    stage=stage,
                    seconds=seconds,
                )
            )
            with open(CATCHERS, "w") as f:
                json.dump(dict(sorted(catchers.items())), f, indent=1)
            if args.report:
                write_report(args.report, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    caught = sum(r["verdict"] == "caught" for r in results)
    print(
        f"\n{caught} of {len(chosen)} mutants caught ({100 * caught / len(chosen):.0f}%; a "
        "timeout counts as not caught)"
    )


if __name__ == "__main__":
    main()
