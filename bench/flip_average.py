"""Distilled U-Net: its served masks with and without `segment.unet_flip_average` (the mean over
the image and its left-right mirror image), scored on validation images, to choose the setting
without looking at the images the README reports: built-in scenes of another seed than the
reported `data.eval_seed`, or a validation folder (or dataset) with masks given with --data.

    python bench/flip_average.py --run runs/synthetic --eval-seed 777
    python bench/flip_average.py --run RUN --data folder:data/photos32/validation

The average runs at inference only, so the run's trained U-Net is rescored as it is.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_steps import score_rows, validation_data, validation_options  # noqa: E402


@click.command()
@validation_options
def main(run_dir, eval_seed, spec):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered.models.segmenter import Segmenter

    cfg, data, shown, path = validation_data(run_dir, spec, eval_seed, "distilled")
    served = keras.saving.load_model(path)
    click.echo(f"{run_dir}: distilled U-Net on {shown}, largest component {served.largest_component}")
    score_rows("flip average", ((str(flip).lower(), Segmenter(served.network, cfg.data.resolution,
                                                              largest_component=served.largest_component,
                                                              flip_average=flip, threshold=served.threshold))
                                for flip in (False, True)), data)


if __name__ == "__main__":
    main()
