"""Both segmenters of a run, and their mean: the encoder path with and without
`segment.encoder_flip_average` (the mean over the image and its left-right mirror image), then the
served ensemble (`segment.serve: ensemble`) at each encoder share of --shares, with and without the
encoder's mirror average (the U-Net's as the run saved it), scored on validation images, to choose
the settings without looking at the images the README reports: built-in scenes of another seed
than the reported `data.eval_seed`, or a validation folder (or dataset) with masks given with --data.

    python bench/ensemble.py --run RUN --data folder:data/photos32/validation --shares 0,0.2,0.3,0.4,1
    python bench/ensemble.py --run runs/synthetic --eval-seed 777
    python bench/ensemble.py --run RUN --save 0.3     # writes RUN/segmenter_ensemble.keras, scores nothing

All of it runs at inference only, so the run's trained networks are rescored as they are. --save
writes the ensemble of the run's two saved segmenters at that share, each network with the mirror
average its segmenter was saved with: a run trained without `segment.serve: ensemble` (or whose
networks were trained apart) then gets the segmenter the recipe would serve, for `cli.py evaluate`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_steps import score_rows, validation_data, validation_options  # noqa: E402


def parse_shares(text):
    try:
        shares = [float(item) for item in text.split(",")]
    except ValueError:
        shares = []
    if not shares or any(not 0.0 <= share <= 1.0 for share in shares):
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers in [0, 1]", param_hint="--shares")
    return shares


def save_ensemble(run_dir, share):
    import keras

    from keras_layered.config import load_config
    from keras_layered.models.mask_ensemble import ensemble_segmenter

    paths = [run_dir / f"segmenter_{network}.keras" for network in ("distilled", "encoder")]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise click.BadParameter(f"{run_dir} has no {', '.join(missing)}", param_hint="--run")
    cfg = load_config(run_dir / "config.yaml")
    distilled, encoder = (keras.saving.load_model(path) for path in paths)
    ensemble = ensemble_segmenter(distilled.network, encoder.network, share, cfg.data.resolution,
                                  distilled.flip_average, encoder.flip_average, distilled.largest_component,
                                  distilled.threshold)
    ensemble.build((None, cfg.data.resolution, cfg.data.resolution, 3))
    ensemble.save(run_dir / "segmenter_ensemble.keras")
    click.echo(f"{run_dir / 'segmenter_ensemble.keras'}: {1.0 - share:g} x the U-Net (mirror average "
               f"{str(distilled.flip_average).lower()}) + {share:g} x the encoder path (mirror average "
               f"{str(encoder.flip_average).lower()})")


@click.command()
@validation_options
@click.option("--shares", default="0,0.2,0.3,0.4,0.5,1", show_default=True,
              help="Encoder shares of the ensemble (segment.ensemble_encoder_share), comma-separated.")
@click.option("--save", "save_share", type=click.FloatRange(0, 1), default=None,
              help="Write RUN/segmenter_ensemble.keras at this encoder share instead of scoring.")
def main(run_dir, eval_seed, spec, shares, save_share):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered.models.mask_ensemble import ensemble_segmenter
    from keras_layered.models.segmenter import Segmenter

    if save_share is not None:
        save_ensemble(run_dir, save_share)
        return
    shares = parse_shares(shares)
    cfg, data, shown, encoder_path = validation_data(run_dir, spec, eval_seed, "encoder")
    distilled_path = run_dir / "segmenter_distilled.keras"
    if not distilled_path.is_file():
        raise click.BadParameter(f"{run_dir} has no {distilled_path.name}", param_hint="--run")
    encoder, distilled = keras.saving.load_model(encoder_path), keras.saving.load_model(distilled_path)
    inversion, unet = encoder.network, distilled.network
    res, largest, threshold = cfg.data.resolution, distilled.largest_component, distilled.threshold
    click.echo(f"{run_dir}: segmenters on {shown}, largest component {largest}, "
               f"U-Net mirror average {str(distilled.flip_average).lower()}, mask threshold {threshold:g}")
    score_rows("encoder mirror average",
               ((str(flip).lower(), Segmenter(inversion, res, largest_component=largest, flip_average=flip,
                                              threshold=threshold))
                for flip in (False, True)), data)
    for flip in (False, True):
        score_rows(f"ensemble share, encoder mirror average {str(flip).lower()}",
                   ((share, ensemble_segmenter(unet, inversion, share, res, distilled.flip_average, flip,
                                               largest, threshold))
                    for share in shares), data)


if __name__ == "__main__":
    main()
