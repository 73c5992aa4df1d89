"""data.source end to end: validated in the config, dispatched by `data.sources` for training,
evaluation and FID, and used by `train --data` and `evaluate --data` as a new user runs them."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image


from keras_layered.config import ConfigError, config_from_dict, load_config
from keras_layered.data import sources
from keras_layered.data.spec import parse_data_spec
from keras_layered.training.build import build_dataset, build_eval_dataset

from keras_layered import cli
REPO = Path(__file__).resolve().parents[1]


def make_cub(root, classes=2, per_class=3, masks=True):
    """CUB-200-2011 layout, 40 x 30 photos: images/<class>/<name>.jpg (+ segmentations/<class>/<name>.png),
    one grayscale and one RGBA image, and one corrupt file."""
    for c in range(classes):
        cls = f"00{c + 1}.Class{c}"
        (root / "images" / cls).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(10 * c + i)
            image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
            if (c, i) == (0, 1):
                image = image.convert("L")
            if (c, i) == (1, 2):
                image.convert("RGBA").save(root / "images" / cls / f"bird_{i}.png")
            else:
                image.save(root / "images" / cls / f"bird_{i}.jpg")
            if masks:
                (root / "segmentations" / cls).mkdir(parents=True, exist_ok=True)
                mask = np.zeros((30, 40), np.uint8)
                mask[8:22, 10 + i:30] = 255
                Image.fromarray(mask).save(root / "segmentations" / cls / f"bird_{i}.png")
    (root / "images" / "001.Class0" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def data_config(source, **data):
    return config_from_dict({"data": {"source": source, "resolution": 16, **data}}).data


# The config


@pytest.mark.parametrize("source", ["synthetic", "folder:data/CUB_200_2011", "tfds:caltech_birds2011",
                                    "tfds:oxford_flowers102", "tfds:oxford_iiit_pet", "tfds:lsun/car"])
def test_config_accepts_every_form(source):
    assert load_config(overrides=[f"data.source={source}"]).data.source == source


@pytest.mark.parametrize("source, hint", [("data/birds", "write folder:data/birds"), ("Synthetic", "accepted forms"),
                                          ("tfds:nope", "not supported")])
def test_config_rejects_other_sources_naming_the_key(source, hint):
    with pytest.raises(ConfigError, match=f"data.source: .*{hint}"):
        load_config(overrides=[f"data.source={source}"])


def test_every_example_of_the_accepted_forms_is_accepted():
    with pytest.raises(ValueError) as info:
        parse_data_spec("nothing")
    examples = re.findall(r"e\.g\. (\S+)(?: or (\S+))?", str(info.value))
    examples = [e for pair in examples for e in pair if e]
    assert len(examples) == 4, str(info.value)
    for example in examples:
        assert load_config(overrides=[f"data.source={example}"]).data.source == example


@pytest.mark.parametrize("override, key", [("data.crop_scale=0.9", "data.crop_scale"),
                                           ("data.shuffle_buffer=0", "data.shuffle_buffer"),
                                           ("data.flip=1", "data.flip")])
def test_data_options_are_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=[override])


def test_every_config_file_loads():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert {f.stem for f in files} >= {"synthetic", "cub_64", "cub_128", "flowers_64", "flowers_128",
                                       "lsun_car_64", "lsun_car_128"}
    for path in files:
        cfg = load_config(path)
        raw = yaml.safe_load(path.read_text())
        for section, values in raw.items():  # nothing the file sets is silently dropped
            for key, value in values.items():
                assert getattr(getattr(cfg, section), key) == value, f"{path.name}: {section}.{key}"
        if path.stem not in ("synthetic", "photos"):  # the paper's settings
            assert cfg.perturb.max_shift == 0.125 and cfg.perturb.bg_contrast_jitter == 0.3
            assert cfg.loss.min_mask_coverage == 0.25
            assert cfg.loss.mask_coverage_weight == cfg.loss.binarization_weight == 2.0
            assert (cfg.train.beta_1, cfg.train.beta_2, cfg.train.ema_decay) == (0.0, 0.99, 0.999)
            assert cfg.data.resolution == int(path.stem.rsplit("_", 1)[1])


@pytest.mark.parametrize("text, name", [("synthetic", "synthetic"), ("folder:data/CUB_200_2011/", "CUB_200_2011"),
                                        ("folder:data/pets/images", "pets"), ("tfds:lsun/car", "lsun_car")])
def test_short_names_for_runs_and_files(text, name):
    assert parse_data_spec(text).short_name == name


# Dispatch


def test_folder_training_batches(tmp_path):
    data = data_config(f"folder:{make_cub(tmp_path / 'cub')}")
    batch = next(iter(sources.training_dataset(data, 4))).numpy()
    assert batch.shape == (4, 16, 16, 3) and -1.0 <= batch.min() and batch.max() <= 1.0
    cfg = config_from_dict({"data": {"source": data.source, "resolution": 16}, "train": {"batch_size": 2}})
    assert next(iter(build_dataset(cfg))).shape == (2, 16, 16, 3)


def test_folder_resumed_stream_continues_the_uninterrupted_one(tmp_path):
    data = data_config(f"folder:{make_cub(tmp_path / 'cub')}")
    whole = [b.numpy() for b in sources.training_dataset(data, 2).take(6)]  # 12 images: 2 epochs of 6
    resumed = [b.numpy() for b in sources.training_dataset(data, 2, start=6).take(3)]
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cache", [False, True])
def test_folder_evaluation_has_the_images_with_masks(tmp_path, cache):
    root = make_cub(tmp_path / "cub")
    (root / "images" / "001.Class0" / "extra.jpg").write_bytes((root / "images" / "001.Class0" / "bird_0.jpg")
                                                                .read_bytes())  # an image without a mask
    data = data_config(f"folder:{root}", cache=cache)
    assert sources.evaluation_split(data) == "the images with masks (also trained on, without the masks)"
    batches = list(sources.evaluation_dataset(data, 4))
    assert [len(b["image"]) for b in batches] == [4, 2]
    masks = np.concatenate([b["mask"].numpy() for b in batches])
    assert set(np.unique(masks)) == {0.0, 1.0}
    # 40 x 30 -> 24 x 18, centre crop 16 x 16 at column 4: the mask's rows 8..21 of 30 -> about 5..12 of 18.
    assert masks[0, 8, 8, 0] == 1.0 and masks[0, 0, 8, 0] == 0.0


def test_evaluation_subset_is_seeded_bounded_and_in_order():
    pairs = [(f"image_{i}", f"mask_{i}") for i in range(100)]
    chosen = sources.evaluation_subset(pairs, 10, seed=12345)
    assert len(chosen) == 10 and len(set(chosen)) == 10 and set(chosen) <= set(pairs)
    assert chosen == sorted(chosen, key=pairs.index)  # the folder's order
    assert chosen == sources.evaluation_subset(pairs, 10, seed=12345)  # the same images every time
    assert chosen != sources.evaluation_subset(pairs, 10, seed=1)
    assert chosen[0] != pairs[0] or chosen[-1] != pairs[9]  # drawn from all, not the first ten
    assert sources.evaluation_subset(pairs, 0, seed=12345) == pairs  # 0 = all
    assert sources.evaluation_subset(pairs[:5], 10, seed=12345) == pairs[:5]


def test_folder_evaluation_scores_a_fixed_subset(tmp_path):
    root = make_cub(tmp_path / "cub")  # 6 images with masks
    data = data_config(f"folder:{root}", eval_images=4)
    assert sources.evaluation_split(data) == ("4 of the 6 images with masks (data.eval_seed 12345; also trained "
                                              "on, without the masks)")
    first = np.concatenate([b["image"].numpy() for b in sources.evaluation_dataset(data, 3)])
    again = np.concatenate([b["image"].numpy() for b in sources.evaluation_dataset(data, 4)])
    assert first.shape == (4, 16, 16, 3) and np.array_equal(first, again)
    everything = np.concatenate([b["image"].numpy() for b in sources.evaluation_dataset(
        data_config(f"folder:{root}", eval_images=0), 4)])
    assert len(everything) == 6 and sum(any(np.array_equal(x, y) for y in everything) for x in first) == 4


def test_folder_without_masks_is_not_scored(tmp_path):
    data = data_config(f"folder:{make_cub(tmp_path / 'cub', masks=False)}")
    assert sources.evaluation_split(data) is None and sources.evaluation_dataset(data, 4) is None


def test_synthetic_evaluation_is_the_held_out_scenes():
    data = data_config("synthetic", eval_scenes=6)
    assert sources.evaluation_split(data) == "held-out scenes (data.eval_seed 12345)"
    assert [len(b["mask"]) for b in sources.evaluation_dataset(data, 4)] == [4, 2]


def test_tfds_sources_through_build():
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = config_from_dict({"data": {"source": "tfds:caltech_birds2011", "resolution": 16}})
    with tfds.testing.mock_data(num_examples=3):
        assert next(iter(build_dataset(cfg, 2))).shape == (2, 16, 16, 3)
        assert [len(b["mask"]) for b in build_eval_dataset(cfg, 2)] == [2, 1]
        few = config_from_dict({"data": {"source": "tfds:caltech_birds2011", "resolution": 16, "eval_images": 2}})
        assert [len(b["mask"]) for b in build_eval_dataset(few, 4)] == [2]  # the first 2 of the test split
        flowers = config_from_dict({"data": {"source": "tfds:oxford_flowers102", "resolution": 16}})
        assert build_eval_dataset(flowers) is None
    assert sources.evaluation_split(cfg.data) == "the test split, its first 512 images"
    assert sources.evaluation_split(data_config("tfds:caltech_birds2011", eval_images=0)) == "the test split"
    assert sources.evaluation_split(data_config("tfds:lsun/car")) is None


def test_reference_images_are_a_fixed_set_of_centre_crops(tmp_path):
    data = data_config(f"folder:{make_cub(tmp_path / 'cub')}")
    first, second = ([b.numpy() for b in sources.reference_dataset(data, 4, 5)] for _ in range(2))
    assert [len(b) for b in first] == [4, 1]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert [len(b) for b in sources.reference_dataset(data_config("synthetic"), 4, 6)] == [4, 2]


def test_unavailable_data_is_a_config_error_naming_the_source(tmp_path):
    with pytest.raises(ConfigError, match=f"data.source folder:{tmp_path}/nowhere: .*does not exist"):
        sources.check_available(data_config(f"folder:{tmp_path}/nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        sources.check_available(data_config(f"folder:{tmp_path}/empty"))
    with pytest.raises(ConfigError, match=f"tfds build oxford_flowers102 --data_dir {tmp_path}|pip install "
                                          f"tensorflow-datasets"):
        sources.check_available(data_config("tfds:oxford_flowers102", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=f"data.source folder:{tmp_path}/nowhere"):
        sources.training_dataset(data_config(f"folder:{tmp_path}/nowhere"), 4)


# The command line


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_train_data_option_sets_the_source_and_names_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # --dry-run checks the data as train does: a missing folder is refused, an existing one passes.
    result = invoke("train", "--data", "folder:data/CUB_200_2011", "--dry-run")
    assert result.exit_code == 2 and "data/CUB_200_2011 does not exist" in result.output
    (tmp_path / "data/CUB_200_2011/images/001").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data/CUB_200_2011/images/001/a.png")
    result = invoke("train", "--data", "folder:data/CUB_200_2011", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "using the photo recipe photos.yaml for folder:data/CUB_200_2011" in result.stderr
    assert yaml.safe_load(result.stdout)["data"]["source"] == "folder:data/CUB_200_2011"
    assert cli._default_run_dir(None, ["data.source=tfds:lsun/car"]) == "runs/lsun_car"
    assert cli._default_run_dir(None, []) == "runs/synthetic"


def test_train_on_a_missing_folder_fails_before_writing_anything(tmp_path):
    result = invoke("train", "--data", f"folder:{tmp_path}/nowhere", "--out", tmp_path / "run")
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    result = invoke("train", "--data", "tfds:mnist", "--out", tmp_path / "run", "--dry-run")
    assert result.exit_code != 0 and "not supported" in result.output


TINY = {
    "data.resolution": 16, "model.latent_dim": 8, "model.base_width": 16, "model.min_width": 8,
    "model.d_base_width": 16, "model.d_min_width": 8, "train.steps": 2, "train.steps_per_epoch": 2,
    "train.batch_size": 4, "train.sample_every": 2, "train.checkpoint_every": 2, "segment.steps": 2,
    "segment.steps_per_epoch": 2, "segment.batch_size": 4, "segment.checkpoint_every": 2,
    "segment.encoder_base_width": 16, "segment.encoder_min_width": 8, "segment.unet_width": 4,
    "segment.unet_depth": 2, "segment.refine_steps": 2,
}


@pytest.mark.slow
def test_train_then_evaluate_on_a_cub_folder(tmp_path):
    cub = make_cub(tmp_path / "CUB_200_2011")
    run = tmp_path / "run"
    args = ["train", "--config", REPO / "configs" / "cub_64.yaml", "--data", f"folder:{cub}", "--out", run]
    for key, value in {**TINY, "model.generator": "dcgan", "data.eval_images": 4}.items():
        args += ["--set", f"{key}={value}"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "mean IoU" in result.output and f"done: {run}" in result.output
    assert "scoring distilled on 4 of the 6 images with masks" in result.output  # then its progress bar
    assert "\r      1/" in result.output.split("scoring distilled on")[1]  # batch 1 of 1 (or of "Unknown")
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["data"] == f"folder:{cub}" and evaluation["results"]["distilled"]["num_images"] == 4

    result = invoke("evaluate", "--model", run)  # the run's own data by default, its 4 images
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "evaluation_segmenter_CUB_200_2011.json").read_text())
    assert scores["num_images"] == 4 and scores["mean_iou"] == pytest.approx(
        evaluation["results"]["distilled"]["mean_iou"], abs=1e-6)
    result = invoke("evaluate", "--model", run, "--all", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "scoring segmenter on the images with masks" in result.output and "\r      2/" in result.output
    assert json.loads((run / "evaluation_segmenter_CUB_200_2011.json").read_text())["num_images"] == 6

    plain = make_cub(tmp_path / "no_masks", masks=False)
    result = invoke("evaluate", "--model", run, "--data", f"folder:{plain}")
    assert result.exit_code != 0 and "no ground-truth masks" in result.output and "Traceback" not in result.output
