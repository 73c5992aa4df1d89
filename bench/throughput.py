"""Images per second of the full layered-GAN training iteration (D step + G step + EMA).

    python bench/throughput.py                       # the default config (configs/synthetic.yaml)
    python bench/throughput.py --set train.batch_size=32 --steps 50
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click

from keras_layered.config import load_config

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.yaml")


@click.command()
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--steps", default=100, show_default=True, help="Timed iterations (after warm-up).")
@click.option("--warmup", default=20, show_default=True, help="Untimed iterations (tracing, caches).")
def main(config_path, overrides, steps, warmup):
    import tensorflow as tf

    from keras_layered.training.build import build_dataset, build_layered_gan

    cfg = load_config(config_path, overrides)
    gan = build_layered_gan(cfg)
    data = build_dataset(cfg)
    gan.fit(data, epochs=1, steps_per_epoch=warmup, verbose=0)
    start = time.perf_counter()
    gan.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    elapsed = time.perf_counter() - start
    batch = cfg.train.batch_size
    print(
        f"{cfg.data.resolution}px batch {batch} generator={cfg.model.generator} "
        f"jit_compile={cfg.train.jit_compile} threads={tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}: "
        f"{steps * batch / elapsed:.1f} images/s ({1000 * elapsed / steps:.1f} ms per iteration)"
    )


if __name__ == "__main__":
    main()
