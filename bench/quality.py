"""Segmentation quality from scratch: the full pipeline (GAN + segmentation stage) on the built-in
scenes, per seed, with and without the random shift (the paper's ablation), scored on held-out
scenes. Prints one table and writes JSON.

    python bench/quality.py                                  # default config, seeds 0 1 2, + no-shift ablation
    python bench/quality.py --seeds 0 --no-ablation --set train.steps=1000
    python bench/quality.py --out-dir /tmp/quality --set segment.steps=250

Each run is an ordinary run directory (resumable: rerunning skips finished runs).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import statistics
import time
from pathlib import Path

import click

from keras_layered.config import ConfigError, load_config
from keras_layered.recipes import resolve_config

ROOT = Path(__file__).resolve().parents[1]


def run_one(config_path, overrides, run_dir):
    """Trains (or resumes) one run; returns its evaluation results and wall time in seconds."""
    from keras_layered.training import run

    cfg = load_config(config_path, overrides)
    start = time.perf_counter()
    results = run.train(cfg, run_dir, stage="all", verbose=0)
    return cfg, results, time.perf_counter() - start


def summary_rows(rows):
    """min / median / max mean IoU per (variant, method) over seeds."""
    groups = {}
    for row in rows:
        groups.setdefault((row["variant"], row["method"]), []).append(row["mean_iou"])
    return [
        {"variant": v, "method": m, "seeds": len(ious), "min": min(ious), "median": statistics.median(ious),
         "max": max(ious)}
        for (v, m), ious in groups.items()
    ]


@click.command()
@click.option("--config", "config_path", default="synthetic", show_default=True,
              help="A shipped recipe's name or a YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated train.seed values.")
@click.option("--ablation/--no-ablation", default=True, show_default=True,
              help="Also train every seed with perturb.max_shift=0.")
@click.option("--out-dir", default=str(ROOT / "bench" / "results" / "quality"), show_default=True,
              type=click.Path(file_okay=False), help="Run directories and quality.json go here.")
def main(config_path, overrides, seeds, ablation, out_dir):
    try:
        config_path = resolve_config(config_path)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config") from err
    out_dir = Path(out_dir)
    variants = [("shift", ())] + ([("no-shift", ("perturb.max_shift=0",))] if ablation else [])
    rows = []
    for variant, extra in variants:  # every seed of the recipe first, then the ablation
        for seed in [int(s) for s in seeds.split(",")]:
            run_dir = out_dir / f"{variant}_seed{seed}"
            cfg, results, seconds = run_one(config_path, [*overrides, *extra, f"train.seed={seed}"], run_dir)
            for method, scores in results.items():
                rows.append({"variant": variant, "seed": seed, "method": method, "mean_iou": scores["mean_iou"],
                             "dice": scores["mean_dice"], "wall_s": round(seconds, 1), "gan_steps": cfg.train.steps,
                             "segment_steps": cfg.segment.steps, "run": str(run_dir)})
            click.echo(f"{variant} seed {seed}: " + ", ".join(
                f"{m} {s['mean_iou']:.3f}" for m, s in results.items()) + f" ({seconds / 60:.1f} min)")
            write_json(out_dir, rows)  # after every run, so an interrupted benchmark keeps what finished

    click.echo(f"\n{'variant':<10}{'seed':>5}  {'method':<10}{'mean IoU':>9}{'Dice':>7}{'minutes':>9}{'steps (gan+seg)':>17}")
    for r in rows:
        click.echo(f"{r['variant']:<10}{r['seed']:>5}  {r['method']:<10}{r['mean_iou']:>9.3f}{r['dice']:>7.3f}"
                   f"{r['wall_s'] / 60:>9.1f}{r['gan_steps']:>9}+{r['segment_steps']}")
    click.echo(f"\n{'variant':<10}{'method':<10}{'seeds':>6}{'min':>7}{'median':>8}{'max':>7}")
    for s in summary_rows(rows):
        click.echo(f"{s['variant']:<10}{s['method']:<10}{s['seeds']:>6}{s['min']:>7.3f}{s['median']:>8.3f}{s['max']:>7.3f}")
    click.echo(f"wrote {out_dir / 'quality.json'}")


def write_json(out_dir, rows):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps({"rows": rows, "summary": summary_rows(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
