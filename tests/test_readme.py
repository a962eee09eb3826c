"""The README is one page, and the figures it quotes are the ones its sources hold: the
quickstart's table is the mean ± std of the per-seed rows that ambient-sweep variants wrote into
docs/ambient_quality.md, the mixed-quality table the one benchmarks/mixed_quality_tables.py
computes from benchmarks/results/mixed_quality.json, the U-Net sentence's shares the means of
benchmarks/results/unet30_variants.json, and the held-out reals' shares in the quickstart's
reference column the ones it wrote beside those rows. (The training images' FD-pixel in
that column is typed once, in the README.)"""

import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from ambient_jax.programs import variant_runs as variants  # noqa: E402

README = open(os.path.join(ROOT, "README.md")).read()


def table_rows(text):
    """{first cell: [cells]} of the markdown table rows in `text`."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def between(text, marker):
    return re.search(rf"<!-- {marker} -->(.*)<!-- /{marker} -->", text, flags=re.S).group(1)


def mean_std(values, fmt):
    """A table cell: mean ± std over the seeds, the value alone for one seed."""
    v = np.asarray(values, float)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"


def test_readme_is_one_page_with_the_two_commands_first():
    lines = README.splitlines()
    assert len(lines) <= 150, len(lines)
    first_command = next(i for i, line in enumerate(lines) if line.startswith("launch/"))
    assert first_command < 20, first_command


def test_the_quickstart_table_is_the_mean_of_the_variant_runs_it_cites():
    docs = open(os.path.join(ROOT, "docs", "ambient_quality.md")).read()
    block = between(docs, "variants").split("Mean ± standard deviation")[0]  # the per-seed rows
    per_seed = [line for line in block.splitlines() if re.match(r"\| \w[\w.]* \| \d \|", line)]
    head = next(line for line in block.splitlines() if line.startswith("| variant"))
    columns = [c.strip() for c in head.strip("|").split("|")][2:]
    seeds = {"ddpm": {}, "rescaled_1.5": {}}
    for line in per_seed:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in seeds:
            seeds[cells[0]][int(cells[1])] = [float(c) for c in cells[2:]]
    assert all(sorted(s) == [0, 1, 2] for s in seeds.values()), seeds
    section = README.split("## What the quickstart shows")[1]
    readme = table_rows("|" + section.split("\n|", 1)[1].split("\n\n")[0])  # its first table
    quoted = {  # README row -> the variants table's column and its format
        "FD-pixel (vs held-out, lower is better)": ("FD-pixel", ".2f"),
        "Inception FID, 500 samples vs 500 held-out (edm protocol)": ("Inception FID (500)", ".1f"),
        "extraction rate % (Carlini)": ("extraction %", ".1f"),
        "robust extraction rate %": ("robust extraction %", ".1f"),
        "pixel S>0.95 %": ("pixel S>0.95 %", ".1f"),
        "robust S>0.95 %": ("robust S>0.95 %", ".1f"),
    }
    assert set(quoted) <= set(readme), set(quoted) - set(readme)
    for row, (column, fmt) in quoted.items():
        j = columns.index(column)
        unit = 10.0 ** -int(fmt[1])  # the last printed digit: the per-seed rows are rounded to it
        for k, name in enumerate(("ddpm", "rescaled_1.5")):
            v = np.array([seeds[name][s][j] for s in (0, 1, 2)])
            mean, std = (float(x) for x in readme[row][k].split(" ± "))
            assert abs(mean - v.mean()) <= unit, (row, name, mean, v.mean())
            assert abs(std - v.std(ddof=1)) <= unit, (row, name, std, v.std(ddof=1))
    # "Held-out real digits (...): extraction 2.5%, robust extraction 1.5%, ..."
    line = block.split("Held-out real digits")[1].split("\n")[0].split(": ", 1)[1].rstrip(".")
    held_out = dict(item.rsplit(" ", 1) for item in line.split(", "))
    for row, (column, _) in list(quoted.items())[2:]:  # the four shares
        share = held_out[column[: -len(" %")]]
        assert readme[row][2] == f"held-out reals: {share[:-1]}", (row, readme[row][2], share)


def test_the_mixed_quality_table_is_computed_from_its_results_files():
    """The corrupted-data rows from mixed_quality.json (no leakage: their target is every
    digit), the omni_* rows from omni.json (confident digits of the target's classes 0-4)."""
    import mixed_quality_tables as tables

    results = os.path.join(ROOT, "benchmarks", "results")
    mixed = json.load(open(os.path.join(results, "mixed_quality.json")))
    omni_path = os.path.join(results, "omni.json")
    omni = json.load(open(omni_path)) if os.path.exists(omni_path) else {}
    getters = {name: (get, fmt) for name, get, fmt in variants.COLUMNS}
    getters["FD-digits"] = (lambda m: m["fd_digits"], ".2f")
    omni_getters = dict(getters)
    omni_getters["confident digits %"] = (tables._confident_target, ".1f")
    omni_getters["leakage (5-9) %"] = (tables._leakage, ".1f")
    block = between(README, "mixed-readme")
    header = [c.strip() for c in block.strip().splitlines()[0].strip("|").split("|")]
    rows = table_rows(block)
    del rows["variant"]
    assert len(rows) >= 7
    for name, cells in rows.items():
        is_omni = name.startswith("omni_")
        raw, get_of = (omni, omni_getters) if is_omni else (mixed, getters)
        runs = [m for key, m in raw.items() if key.rsplit("_seed", 1)[0] == name]
        assert cells[0] == str(len(runs)), (name, cells[0], len(runs))
        for column, cell in zip(header[2:], cells[1:]):
            if column == "leakage (5-9) %" and not is_omni:
                assert cell == "-"
                continue
            get, fmt = get_of[column]
            assert cell == mean_std([get(m) for m in runs], fmt), (name, column, cell)


def test_the_unet_sentence_quotes_its_results_file():
    raw = json.load(open(os.path.join(ROOT, "benchmarks", "results", "unet30_variants.json")))
    seeds = {}
    for key, metrics in raw.items():
        seeds.setdefault(key.rsplit("_seed", 1)[0], []).append(metrics)
    mean = lambda name, key: np.mean([m[key] for m in seeds[name]])
    # the sentence names the ambient row that copies least among those run with three seeds
    seeded = [name for name, runs in seeds.items() if len(runs) >= 3 and name != "unet_ddpm"]
    least = min(seeded, key=lambda name: mean(name, "extraction_rate"))
    _, weighting, sigma_tn = least.split("_")
    sentence = " ".join(README.split("The paper's kind of network, a U-Net,")[1].split()[:40])
    expected = (
        f"ddpm copies {mean('unet_ddpm', 'extraction_rate'):.1f}%",
        f"({weighting} weight, sigma_tn {sigma_tn})",
        f"still copies {mean(least, 'extraction_rate'):.1f}% with "
        f"{mean(least, 'confident_digits'):.1f}% confident digits against ddpm's "
        f"{mean('unet_ddpm', 'confident_digits'):.1f}%",
    )
    for phrase in expected:
        assert phrase in sentence, (phrase, sentence)


def test_both_readings_are_computed_from_the_results_files():
    """The README's table of each study under both readings is readings.py's output (no figure
    typed), and its U-Net row is the one the issue quotes: 0.73x ddpm's Inception FID, 0.17x its
    robust S>0.95, about 23 points fewer confident digits; the paper's own row 0.95x and 0.17x."""
    import readings

    block = between(README, "readings")
    assert block.strip() == readings.table_text().strip()
    assert "| 0.95 | 0.17 | (no classifier) |" in block
    assert "| 16x16 U-Net from scratch, n = 30 (3 / 3) | 0.73 | 0.17 | -22.7 (confident) |" in block
