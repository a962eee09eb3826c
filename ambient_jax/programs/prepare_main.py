"""ambient-prepare: turn a folder of images into a tfds ArrayRecord data set, once.

    ambient-prepare --folder=MY_IMAGES --data_dir=~/tensorflow_datasets --resolution=64 --channels=3

Then train with --config.data.source=tfds --config.data.tfds_name=ambient_image_folder
--config.data.tfds_data_dir=~/tensorflow_datasets (add --config.data.streaming=True for sets
too big to hold on the devices). TensorFlow is not needed.
"""

from absl import flags

from ambient_jax.data.images import DataError, list_image_files
from ambient_jax.data.tfds_source import BUILDER_NAME, prepare_image_folder
from ambient_jax.programs.common import clean_errors, log, run_program

flags.DEFINE_string(
    "folder", None, "folder of PNG/JPEG images (searched recursively)", required=True
)
flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "tfds data dir to write into")
flags.DEFINE_integer(
    "resolution", 64, "side of the square images (shorter side resized, centre crop)"
)
flags.DEFINE_integer("channels", 3, "1 (grey) or 3 (RGB)")
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    del argv

    if FLAGS.channels not in (1, 3):
        raise DataError(f"--channels must be 1 or 3, got {FLAGS.channels}")
    count = len(list_image_files(FLAGS.folder))
    builder = prepare_image_folder(FLAGS.folder, FLAGS.data_dir, FLAGS.resolution, FLAGS.channels)
    log(f"prepared {count} images as tfds data set '{BUILDER_NAME}' in {builder.data_dir}")


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
