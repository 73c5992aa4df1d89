"""Segmentation quality on photographs: the full pipeline per seed from scratch on the photo
benchmark (bench/photo_data.py), scored on its test split (or validation split, for choices),
beside a centred disc covering 20 % of the image. Prints one table and writes photos.json.

    python bench/photos.py --data data/photos32                     # configs/photos.yaml, seeds 0 1 2, + no-shift
    python bench/photos.py --data data/photos32 --split validation --seeds 0 --no-ablation \\
        --variant shared_z:perturb.background_mixing=0 --set train.steps=3000

Each (variant, seed) is `python cli.py train --data folder:DATA/train --out RUN`, then
`python cli.py evaluate --model RUN/segmenter_<method>.keras --data folder:DATA/<split>` per
method, as a user would run them (resumable: a finished run is not retrained). The data is
written first (bench/photo_data.py, the config's resolution) when DATA/train does not exist.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import summary_rows  # noqa: E402

from keras_layered.config import ConfigError, load_config  # noqa: E402
from keras_layered.recipes import resolve_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"encoder": "encoder path", "distilled": "distilled", "ensemble": "ensemble"}  # those a run has
DISC_AREA = 0.20


def cpu_description(precision):
    """"model, ISA, precision, oneDNN on/off" of this machine's CPU, for the table."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    field = {k.strip(): v.strip() for k, v in field.items()}
    flags = field.get("flags", "").split()
    isa = ("AMX + AVX512_BF16" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else
           "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE")
    onednn = "off" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "on"
    return (f"{field.get('model name', platform.processor())}, {os.cpu_count()} cores, {isa}, {precision}, "
            f"oneDNN {onednn}")


class CentredDisc:
    """A segmenter that ignores the image: a disc at the centre covering `area` of it."""

    def __init__(self, area=DISC_AREA):
        self.area = area

    def predict_on_batch(self, images):
        batch, height, width = images.shape[:3]
        yy, xx = np.mgrid[:height, :width] + 0.5
        radius2 = self.area * height * width / np.pi
        disc = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= radius2).astype(np.float32)
        return np.broadcast_to(disc[None, ..., None], (batch, height, width, 1))


def disc_scores(data_config):
    from keras_layered.data.sources import evaluation_dataset
    from keras_layered.evaluation import evaluate_segmenter

    return evaluate_segmenter(CentredDisc(), evaluation_dataset(data_config, 64))


def cli(*args):
    """Runs `python cli.py ARGS` as a user would; raises with its output if it fails."""
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise click.ClickException(f"python cli.py {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
    return done


def train_and_score(config_path, overrides, data, split, run_dir):
    """(wall seconds of training, {method: scores on DATA/split}) of one run."""
    start = time.perf_counter()
    if not (run_dir / "segmenter.keras").is_file():
        sets = [arg for override in overrides for arg in ("--set", override)]
        cli("train", "--config", config_path, "--data", f"folder:{data / 'train'}", "--out", run_dir, *sets)
    seconds = time.perf_counter() - start
    results = {}
    for method in METHODS:
        model = run_dir / f"segmenter_{method}.keras"
        if model.is_file():
            out = run_dir / f"scores_{method}_{split}.json"
            cli("evaluate", "--model", model, "--data", f"folder:{data / split}", "--out", out)
            results[method] = json.loads(out.read_text())
    return seconds, results


def parse_variant(text):
    """"NAME:KEY=VALUE;KEY=VALUE" -> (NAME, [KEY=VALUE, ...])."""
    name, colon, rest = text.partition(":")
    if not name or not colon:
        raise click.BadParameter(f"{text!r}: expected NAME:KEY=VALUE[;KEY=VALUE...]", param_hint="--variant")
    return name, [item for item in rest.split(";") if item]


@click.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False),
              help="Photo benchmark root (train/, validation/, test/); written first if DATA/train is missing.")
@click.option("--split", type=click.Choice(["validation", "test"]), default="test", show_default=True,
              help="Split scored: validation for choices, test for the reported numbers only.")
@click.option("--config", "config_path", default="photos", show_default=True,
              help="A shipped recipe's name or a YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override for every run.")
@click.option("--variant", "variants", multiple=True, metavar="NAME:KEY=VALUE[;...]",
              help="A variant with its own overrides (repeatable) [default: the config as it is, 'recipe'].")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated train.seed values.")
@click.option("--ablation/--no-ablation", default=True, show_default=True,
              help="Also train every variant and seed with perturb.max_shift=0.")
@click.option("--out-dir", default=str(ROOT / "bench" / "results" / "photos"), show_default=True,
              type=click.Path(file_okay=False), help="Run directories and photos.json go here.")
def main(data, split, config_path, overrides, variants, seeds, ablation, out_dir):
    from keras_layered import distribute

    try:
        config_path = resolve_config(config_path)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config") from err
    data, out_dir = Path(data), Path(out_dir)
    cfg = load_config(config_path, [*overrides, f"data.source=folder:{data / split}"])
    if not (data / "train").is_dir():
        cli_data = [sys.executable, str(ROOT / "bench" / "photo_data.py"), "--out", str(data), "--resolution",
                    str(cfg.data.resolution)]
        subprocess.run(cli_data, check=True)
    variants = [parse_variant(v) for v in variants] or [("recipe", [])]
    if ablation:
        variants += [(f"{name} no-shift", [*extra, "perturb.max_shift=0"]) for name, extra in variants]
    cpu = cpu_description(distribute.resolve_precision(cfg.distribute.mixed_precision))
    disc = disc_scores(cfg.data)
    rows = [{"variant": "-", "seed": "-", "method": f"centred disc ({DISC_AREA:.0%})", "mean_iou": disc["mean_iou"],
             "inverted_iou": disc["mean_inverted_iou"], "dice": disc["mean_dice"], "wall_s": 0.0}]
    for variant, extra in variants:
        for seed in [int(s) for s in seeds.split(",")]:
            run_dir = out_dir / f"{variant.replace(' ', '_')}_seed{seed}"
            seconds, results = train_and_score(config_path, [*overrides, *extra, f"train.seed={seed}"], data, split,
                                               run_dir)
            for method, scores in results.items():
                rows.append({"variant": variant, "seed": seed, "method": METHODS[method], "mean_iou": scores["mean_iou"],
                             "inverted_iou": scores["mean_inverted_iou"], "dice": scores["mean_dice"],
                             "wall_s": round(seconds, 1), "run": str(run_dir)})
            click.echo(f"{variant} seed {seed}: " + ", ".join(
                f"{METHODS[m]} {s['mean_iou']:.3f} (inverted {s['mean_inverted_iou']:.3f})"
                for m, s in results.items()) + f" ({seconds / 60:.1f} min)")
            write_json(out_dir, rows, split, cpu)

    click.echo(f"\nscored on {data / split} ({disc['num_images']} images); CPU: {cpu}")
    click.echo(f"{'variant':<22}{'seed':>5}  {'method':<20}{'mean IoU':>9}{'inverted':>10}{'Dice':>7}{'minutes':>9}")
    for r in rows:
        click.echo(f"{r['variant']:<22}{r['seed']:>5}  {r['method']:<20}{r['mean_iou']:>9.3f}{r['inverted_iou']:>10.3f}"
                   f"{r['dice']:>7.3f}{r['wall_s'] / 60:>9.1f}")
    click.echo(f"\n{'variant':<22}{'method':<20}{'seeds':>6}{'min':>7}{'median':>8}{'max':>7}")
    for s in summary_rows(rows[1:]):
        click.echo(f"{s['variant']:<22}{s['method']:<20}{s['seeds']:>6}{s['min']:>7.3f}{s['median']:>8.3f}"
                   f"{s['max']:>7.3f}")
    click.echo(f"wrote {out_dir / 'photos.json'}")


def write_json(out_dir, rows, split, cpu):
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"split": split, "cpu": cpu, "rows": rows, "summary": summary_rows(rows[1:])}
    (out_dir / "photos.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
