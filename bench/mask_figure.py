"""A picture of a run's segmentations: held-out scenes (or images with masks of a folder or
dataset), their true masks, and the masks of each segmenter the run has (the encoder path, the
distilled U-Net, and the ensemble of both where `segment.serve` is ensemble).

    python bench/mask_figure.py --run runs/default --out docs/default_run_masks.png
    python bench/mask_figure.py --run runs/photos --data folder:data/photos32/test --stride 61 --out photos.png
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option("--data", "spec", default="synthetic", show_default=True,
              help="synthetic (the run's held-out scenes), folder:PATH or tfds:NAME (images with masks).")
@click.option("--scenes", default=8, show_default=True, help="Images, one per row.")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1),
              help="--data folder/tfds: every STRIDE-th image with a mask, from the first.")
@click.option("--zoom", default=3, show_default=True, help="Pixel enlargement for viewing.")
def main(run_dir, out_path, spec, scenes, stride, zoom):
    import keras
    import tensorflow as tf
    from PIL import Image

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered.config import load_config
    from keras_layered.data import sources
    from keras_layered.data.synthetic import make_scenes

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if spec == "synthetic":
        data = make_scenes(tf.range(scenes), cfg.data.resolution, seed=cfg.data.eval_seed,
                           difficulty=cfg.data.difficulty, edges=cfg.data.edges)
        shown = f"scenes 0..{scenes - 1} of seed {cfg.data.eval_seed}"
    else:
        dataset = sources.evaluation_dataset(dataclasses.replace(cfg.data, source=spec, eval_images=0), 64)
        if dataset is None:
            raise click.UsageError(f"--data {spec}: no images with ground-truth masks there")
        data = next(iter(dataset.unbatch().shard(stride, 0).batch(scenes)))
        shown = f"images 0, {stride}, ... ({scenes}) of the images with masks of {spec}"
    images = np.round((data["image"].numpy() + 1.0) * 127.5).astype("uint8")
    columns = [images, np.repeat(data["mask"].numpy() * 255, 3, axis=-1).astype("uint8")]
    names = ["image", "true mask"]
    for method in ("encoder", "distilled", "ensemble"):
        path = run_dir / f"segmenter_{method}.keras"
        if path.is_file():
            masks = keras.saving.load_model(path).predict(images, verbose=0)
            columns.append(np.repeat((masks >= 0.5) * 255, 3, axis=-1).astype("uint8"))
            names.append(method)
    stacked = [np.concatenate(list(column), axis=0) for column in columns]
    gap = np.full((stacked[0].shape[0], 1, 3), 128, np.uint8)  # a grey line between columns
    grid = np.concatenate([part for column in stacked for part in (column, gap)][:-1], axis=1)
    picture = Image.fromarray(grid)
    picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST).save(out_path)
    click.echo(f"wrote {out_path}: columns {', '.join(names)}; {shown}")


if __name__ == "__main__":
    main()
