"""Training data: sources, the recorded training subset, and the held-out images.

Images are float32 NHWC in [-1, 1]. A source returns all of its images; the training subset of
n images is then chosen by a seed (`subset.choose_subset`) and recorded in the work dir, and
the images not chosen are the held-out set that the evaluation compares against.
"""

from ambient_jax.data import annotate, corrupt
from ambient_jax.data.images import DataError, to_uint8
from ambient_jax.data.sources import load_source
from ambient_jax.data.subset import (
    SplitData,
    check_subset_record,
    load_split,
    read_subset_record,
    record_subset,
)

__all__ = [
    "DataError",
    "annotate",
    "corrupt",
    "SplitData",
    "check_subset_record",
    "load_source",
    "load_split",
    "read_subset_record",
    "record_subset",
    "to_uint8",
]
