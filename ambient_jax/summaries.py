"""Training, tracking and evaluation scalars and the sample grids as TensorBoard event files,
next to metrics.jsonl, without TensorFlow (tensorboardX writes the event format).

    tensorboard --logdir runs/

Events go to <workdir>/tensorboard/. Work dirs on buckets get metrics.jsonl only (the writer
here is for local disks), and so does a machine without tensorboardX.
"""

import json
import os
import sys

import numpy as np

from ambient_jax import files

EVENTS_DIR = "tensorboard"


def _summary_writer():
    """tensorboardX's SummaryWriter, or None where it is not installed (a dependency, but a bare
    accelerator image may lack it: metrics.jsonl is written anyway). Imported when a run makes
    its writer, not with this module: tensorboardX imports torch where torch is installed, 1.3 s
    that every program would pay at start. torch is kept out of that import too: tensorboardX
    only uses it for torch tensors, which this project never logs, and loading it costs the
    trainer 1.3 s and its memory."""
    absent = "torch" not in sys.modules
    if absent:
        sys.modules["torch"] = None  # type: ignore[assignment]  # (import torch -> ImportError)
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    finally:
        if absent:
            del sys.modules["torch"]
    return SummaryWriter


class Summaries:
    """scalars(step, {name: value}, prefix) and image(step, name, uint8 [H, W, C]); no-ops where
    event files cannot be written."""

    def __init__(self, workdir):
        self.writer = None
        if files.is_remote(workdir):
            return
        writer = _summary_writer()
        if writer is None:
            return
        self.events_dir = os.path.join(workdir, EVENTS_DIR)
        self.writer = writer(self.events_dir, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and name not in ("step", "seconds"):
                self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def image(self, step: int, name: str, image_uint8: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_image(name, image_uint8, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as err:  # (tensorboardX's error names no file)
                raise OSError(
                    err.errno,
                    f"{err.strerror or err}: writing the TensorBoard events in {self.events_dir}",
                ) from err


def metrics_path(workdir: str) -> str:
    """The run's metrics.jsonl: one JSON line per logged step and per tracking record."""
    return os.path.join(workdir, "metrics.jsonl")


def logged_steps(metrics_path: str) -> list[int]:
    """The training steps logged in metrics.jsonl (empty when there is none)."""
    if not files.exists(metrics_path):
        return []
    return [
        json.loads(line)["step"]
        for line in files.read_text(metrics_path).splitlines()
        if line.strip()
    ]


def drop_rows_after(metrics_path: str, step: int) -> int:
    """Remove metrics.jsonl rows past `step` (logged after the checkpoint a run resumes from)."""
    lines = [line for line in files.read_text(metrics_path).splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        files.write_text_atomic(metrics_path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
