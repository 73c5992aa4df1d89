"""The random shift of the foreground layer: the perturbation that makes segmentation emerge."""

import keras
from keras import ops

from keras_layered import distribute
from keras_layered.config import PerturbConfig
from keras_layered.layers.perturbation import Perturbation


def shift(x, offsets):
    """Translates each image of `x` by its own offset, filling with zeros.

    Args:
        x: (B, H, W, C) images.
        offsets: (B, 2) offsets (dy, dx) in pixels; positive moves content down / right.
            Fractional offsets interpolate bilinearly.

    Returns:
        (B, H, W, C) shifted images; pixels whose source lies outside the image are 0.

    The shift is two products with interpolation matrices m[i, k] = max(0, 1 - |k - (i - d)|):
    for integer offsets these are 0/1 selections, so the shift is exact (each output pixel is one
    input pixel times 1). Vectorised over the batch, XLA-friendly, and differentiable with
    respect to `x` and to (fractional) offsets.
    """
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    offsets = ops.cast(offsets, x.dtype)
    rows = _interpolation(offsets[:, 0], height, x.dtype)  # (B, H, H): rows[b, i, k] = weight of k in i
    cols = _interpolation(offsets[:, 1], width, x.dtype)  # (B, W, W)
    x = ops.einsum("bik,bkwc->biwc", rows, x)
    return ops.einsum("bjl,bilc->bijc", cols, x)


def _interpolation(offset, size, dtype):
    target = ops.cast(ops.arange(size, dtype="float32"), dtype)  # TF has no float16 range in graphs
    source = target[None, :, None] - offset[:, None, None]  # (B, size, 1): where output i reads from
    return ops.relu(1.0 - ops.abs(source - target[None, None, :]))


@keras.saving.register_keras_serializable(package="keras_layered")
class RandomShift(Perturbation):
    """Shifts several aligned tensors (foreground, mask) by one random offset per sample.

    Each offset component is drawn uniformly in [-max_shift * size, max_shift * size] and
    rounded, as in Bielski & Favaro (2019). All inputs get the same offsets, so the foreground
    and its mask move together. Active in training only.

    Args:
        max_shift: largest shift as a fraction of the image height / width, in [0, 0.5).
        seed: seed of the layer's own random generator.

    Call arguments:
        inputs: a (B, H, W, C) tensor or a list of such tensors sharing B, H and W.
        training: whether the layer is in training mode.
    """

    def __init__(self, max_shift=PerturbConfig.max_shift, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= max_shift < 0.5:
            raise ValueError(
                f"RandomShift: max_shift must be in [0, 0.5) (a fraction of the image size), "
                f"got {max_shift}."
            )
        self.max_shift = max_shift

    def sample_offsets(self, batch_size, height, width):
        """(B, 2) int32 offsets (dy, dx) drawn from the layer's distribution."""
        limits = ops.cast(ops.stack([height, width]), "float32") * self.max_shift
        u = distribute.uniform((batch_size, 2), self.seed_generator, -1.0, 1.0)
        return ops.cast(ops.round(u * limits), "int32")

    def call(self, inputs, training=None):
        single = not isinstance(inputs, (list, tuple))
        tensors = [inputs] if single else list(inputs)
        if self.max_shift == 0.0 or not training:
            return inputs
        shape = ops.shape(tensors[0])
        offsets = self.sample_offsets(shape[0], shape[1], shape[2])
        shifted = [shift(t, offsets) for t in tensors]
        return shifted[0] if single else shifted

    def get_config(self):
        config = super().get_config()
        config.update(max_shift=self.max_shift)
        return config
