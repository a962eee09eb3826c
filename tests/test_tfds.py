"""tfds ArrayRecord sources without TensorFlow: preparing a folder, resident and streaming
training."""

import jax
import numpy as np
import pytest
from test_training import tiny_config, write_pngs

from ambient_jax.data import DataError, load_source
from ambient_jax.data.tfds_source import StreamingBatches, load_tfds_images, prepare_image_folder
from ambient_jax.training import train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    write_pngs(str(root / "imgs"), 24)
    prepare_image_folder(str(root / "imgs"), str(root / "data"), resolution=16, channels=3)
    return root


def tfds_config(root, **changes):
    c = tiny_config(**changes)
    c.data.source, c.data.channels = "tfds", 3
    c.data.tfds_name, c.data.tfds_data_dir = "ambient_image_folder", str(root / "data")
    return c


def test_prepared_folder_holds_the_same_images_as_the_folder_source(prepared):
    c = tfds_config(prepared)
    from_tfds = load_source(c.data)
    c.data.source, c.data.path = "folder", str(prepared / "imgs")
    from_folder = load_source(c.data)
    assert from_tfds.shape == from_folder.shape == (24, 16, 16, 3)
    by_bytes = lambda images: sorted(
        image.tobytes() for image in images
    )  # ArrayRecord shuffles the order
    assert by_bytes(from_tfds) == by_bytes(from_folder)


def test_streaming_trains_the_same_model_as_the_resident_path(prepared, tmp_path):
    quiet = lambda _: None
    resident = train.train(
        tfds_config(prepared, **{"train.num_steps": 3}), str(tmp_path / "resident"), log=quiet
    )
    streaming_config = tfds_config(prepared, **{"train.num_steps": 3})
    streaming_config.data.streaming = True
    # tracking needs the images on device
    with pytest.raises(ValueError, match="train.track_every"):
        train.train(streaming_config, str(tmp_path / "refused"), log=quiet)
    streaming_config.train.track_every = 0
    streamed = train.train(streaming_config, str(tmp_path / "streamed"), log=quiet)
    same = jax.tree_util.tree_map(
        lambda a, b: np.array_equal(a, b),
        jax.device_get(resident.params),
        jax.device_get(streamed.params),
    )
    assert all(jax.tree_util.tree_leaves(same))


def test_each_host_reads_its_own_rows(prepared):
    c = tfds_config(prepared)
    subset = np.arange(0, 24, 2)
    index_fn = lambda step: (np.arange(8) * 5 + step) % len(subset)
    whole = StreamingBatches(c.data, subset, index_fn, 8).rows_for(3)
    halves = [
        StreamingBatches(c.data, subset, index_fn, 8, process_index=i, process_count=2).rows_for(3)
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), whole[0])
    np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), whole[1])
    np.testing.assert_array_equal(whole[1], subset[index_fn(3)])  # the rows' source indices


def test_unprepared_sources_say_what_to_do(tmp_path, prepared):
    c = tfds_config(tmp_path)
    with pytest.raises(DataError, match="ambient-prepare"):
        load_tfds_images(c.data)
    c.data.tfds_name = "cifar10"
    with pytest.raises(DataError, match="TensorFlow"):
        load_tfds_images(c.data)
    c = tfds_config(prepared)
    c.data.resolution = 32
    with pytest.raises(DataError, match="data.resolution"):
        load_tfds_images(c.data)
