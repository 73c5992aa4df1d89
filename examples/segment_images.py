"""Segment held-out synthetic scenes with a trained `.keras` segmenter and plot the masks.

    python examples/segment_images.py [runs/synthetic/segmenter.keras]

Cells are separated by `# %%` (VS Code, Jupytext). Needs matplotlib (`pip install matplotlib`).
"""

# %% Load the segmenter: `import keras_layered` registers its classes with Keras.
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_layered  # noqa: F401
from keras_layered.data.synthetic import make_scenes
from keras_layered.evaluation import mask_scores

path = next((a for a in sys.argv[1:] if a.endswith(".keras")), "runs/synthetic/segmenter.keras")
model = keras.saving.load_model(path)

# %% Held-out scenes: a seed the training data never used.
scenes = make_scenes(tf.range(8), model.resolution, seed=12345, difficulty=0.3)
images = np.round((scenes["image"].numpy() + 1.0) * 127.5).astype("uint8")  # [-1, 1] -> [0, 255]
true_masks = scenes["mask"].numpy()[..., 0]

# %% Predict: uint8 images in, masks in [0, 1] out.
masks = model.predict(images, verbose=0)[..., 0]  # (B, H, W)
iou = mask_scores(masks, true_masks)["iou"]  # per image, masks thresholded at 0.5
print(f"mean IoU over {len(images)} scenes: {iou.mean():.3f}")

# %% Image | true mask | predicted mask, one scene per row.
import matplotlib
import matplotlib.pyplot as plt

fig, axes = plt.subplots(len(images), 3, figsize=(6, 2 * len(images)), squeeze=False)
for row, pictures in enumerate(zip(images, true_masks, masks)):
    for ax, picture, title in zip(axes[row], pictures, ("image", "true mask", f"predicted, IoU {iou[row]:.2f}")):
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1)  # the colour map applies to the masks only
        ax.set_title(title, fontsize=8)
        ax.axis("off")
fig.tight_layout()
if matplotlib.get_backend().lower() == "agg":  # no display
    png = Path(path).with_name("segment_images.png")
    fig.savefig(png, dpi=120)
    print(f"saved {png}")
else:
    plt.show()
