"""A small U-Net: image -> mask, the segmentation network distilled from the frozen generator."""

import keras
from keras import layers, ops

from keras_layered.config import DataConfig, SegmentConfig
from keras_layered.models.widths import check_resolution


def _block(width, name):
    return keras.Sequential(
        [
            layers.Conv2D(width, 3, padding="same", name=f"{name}_conv0"),
            layers.LeakyReLU(0.2),
            layers.Conv2D(width, 3, padding="same", name=f"{name}_conv1"),
            layers.LeakyReLU(0.2),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_layered")
class UNet(keras.Model):
    """Encoder-decoder with skip connections (Ronneberger et al. 2015), `depth` halvings deep.
    Beyond the paper: trained on the frozen generator's (composite, mask) pairs, it segments real
    images directly instead of through a latent.

    Args:
        resolution: input size in pixels, a power of two in [8, 256].
        width: channels at full resolution, doubled per level down.
        depth: number of 2x downsamplings (resolution must be divisible by 2**depth).
        max_width: channels never above this (0: no cap).
        low_res_upconv: the decoder's up-convolution at the lower resolution, before the x2
            repeat (4x fewer multiply-adds), instead of after it.

    Call: images (B, H, W, 3) in [-1, 1] -> masks (B, H, W, 1) in [0, 1].
    """

    def __init__(self, resolution=DataConfig.resolution, width=SegmentConfig.unet_width,
                 depth=SegmentConfig.unet_depth, max_width=SegmentConfig.unet_max_width,
                 low_res_upconv=SegmentConfig.unet_low_res_upconv, **kwargs):
        super().__init__(**kwargs)
        check_resolution(resolution, "UNet")
        if not (isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth and resolution % 2**depth == 0):
            raise ValueError(f"UNet: depth must be an int >= 1 with resolution % 2**depth == 0, got {depth!r}.")
        if not (isinstance(max_width, int) and not isinstance(max_width, bool)
                and (max_width == 0 or max_width >= width)):
            raise ValueError(f"UNet: max_width must be 0 (no cap) or an int >= width ({width}), got {max_width!r}.")
        self.resolution = resolution
        self.width = width
        self.depth = depth
        self.max_width = max_width
        self.low_res_upconv = low_res_upconv
        self.widths = [min(width * 2**i, max_width) if max_width else width * 2**i for i in range(depth + 1)]
        self.down_blocks = [_block(self.widths[i], f"down{i}") for i in range(depth)]
        self.bottom = _block(self.widths[depth], "bottom")
        self.up_convs = [layers.Conv2D(self.widths[i], 3, padding="same", name=f"upconv{i}") for i in range(depth)]
        self.up_blocks = [_block(self.widths[i], f"up{i}") for i in range(depth)]
        self.to_mask = layers.Conv2D(1, 1, name="to_mask", dtype="float32")  # float32 under mixed precision

    def build(self, input_shape):
        b, h, w, _ = input_shape
        shape = input_shape
        for i, block in enumerate(self.down_blocks):
            block.build(shape)
            shape = (b, h // 2 ** (i + 1), w // 2 ** (i + 1), self.widths[i])
        self.bottom.build(shape)
        channels = self.widths[self.depth]
        for i in reversed(range(self.depth)):
            size = (b, h // 2**i, w // 2**i)
            self.up_convs[i].build((*size, channels))
            self.up_blocks[i].build((*size, 2 * self.widths[i]))
            channels = self.widths[i]
        self.to_mask.build((b, h, w, self.width))

    def call(self, images, training=False):
        """(B, H, W, 1) masks in [0, 1] of images (B, H, W, 3) in [-1, 1]."""
        return ops.sigmoid(self.mask_logits(images, training=training))

    def mask_logits(self, images, training=False):
        """The logits of `call`'s masks: what training's cross-entropy reads (numerically stable)."""
        skips, x = [], images
        for block in self.down_blocks:
            x = block(x, training=training)
            skips.append(x)
            x = ops.average_pool(x, 2, 2)
        x = self.bottom(x, training=training)
        for i in reversed(range(self.depth)):
            if self.low_res_upconv:
                x = keras.activations.leaky_relu(self.up_convs[i](x), 0.2)
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
            else:
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
                x = keras.activations.leaky_relu(self.up_convs[i](x), 0.2)
            x = self.up_blocks[i](ops.concatenate([x, skips[i]], axis=-1), training=training)
        return self.to_mask(x)

    def get_config(self):
        config = super().get_config()
        config.update(resolution=self.resolution, width=self.width, depth=self.depth, max_width=self.max_width,
                      low_res_upconv=self.low_res_upconv)
        return config
