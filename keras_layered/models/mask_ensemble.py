"""A segmentation network whose mask is the weighted mean of other networks' masks."""

import keras
from keras import ops

from keras_layered.models.segmenter import Segmenter, network_masks


@keras.saving.register_keras_serializable(package="keras_layered")
class MaskEnsemble(keras.Model):
    """images (B, H, W, 3) in [-1, 1] -> masks (B, H, W, 1): sum_i shares[i] * mask of networks[i].

    The two segmenters of a run err on different images (the U-Net on clutter that looks like
    an object, the encoder path on shapes its generator does not draw), so the mean of their soft
    masks is right more often than either; wrap it in a `Segmenter` to serve it.

    Args:
        networks: segmentation networks, images in [-1, 1] -> masks in [0, 1] or a dict holding them
            under "mask" (`UNet`, `GeneratorInversion`).
        shares: one weight per network, each in [0, 1], summing to 1.
        flip_average: one bool per network (default all False): that network's mask is the mean over
            the image and its mirror image (`network_masks`).
    """

    def __init__(self, networks, shares, flip_average=None, **kwargs):
        super().__init__(**kwargs)
        networks, shares = list(networks), [float(s) for s in shares]
        flip_average = [False] * len(networks) if flip_average is None else [bool(f) for f in flip_average]
        if not networks or len(shares) != len(networks) or len(flip_average) != len(networks):
            raise ValueError(f"MaskEnsemble: one share and one flip_average per network, got {len(networks)} "
                             f"networks, {len(shares)} shares and {len(flip_average)} flip_average values")
        if any(not 0.0 <= s <= 1.0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"MaskEnsemble: shares must lie in [0, 1] and sum to 1, got {shares}")
        self.networks, self.shares, self.flip_average = networks, shares, flip_average

    @property
    def refine_steps(self):
        """The most latent-refinement steps of any member (gradient steps inside the graph)."""
        return max(getattr(network, "refine_steps", 0) for network in self.networks)

    def build(self, input_shape):
        for network in self.networks:
            if not network.built:
                network.build(input_shape)

    def call(self, images, training=False):
        masks = [ops.cast(network_masks(network, images, flip), "float32")
                 for network, flip in zip(self.networks, self.flip_average)]
        return sum(share * mask for share, mask in zip(self.shares, masks))

    def get_config(self):
        config = super().get_config()
        config.update(networks=[keras.saving.serialize_keras_object(n) for n in self.networks],
                      shares=self.shares, flip_average=self.flip_average)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["networks"] = [keras.saving.deserialize_keras_object(n) for n in config["networks"]]
        return cls(**config)


def ensemble_segmenter(unet, inversion, encoder_share, resolution, unet_flip_average=False,
                       encoder_flip_average=False, largest_component=False, threshold=0.5, shift_average=0):
    """The served ensemble of a run (`segment.serve: ensemble`): a `Segmenter` of (1 - encoder_share) x
    the U-Net's mask + encoder_share x the encoder path's (`inversion`), each with its own mirror
    average; the shift average, the largest region and the threshold apply to their mean."""
    ensemble = MaskEnsemble([unet, inversion], [1.0 - encoder_share, encoder_share],
                            flip_average=[unet_flip_average, encoder_flip_average])
    return Segmenter(ensemble, resolution, largest_component=largest_component, threshold=threshold,
                     shift_average=shift_average)
