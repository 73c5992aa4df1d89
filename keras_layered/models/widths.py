"""Channel schedule shared by the generators and the discriminator."""

from keras_layered.config import RESOLUTION_RULE, is_resolution


def check_resolution(resolution, owner):
    if not is_resolution(resolution):
        raise ValueError(
            f"{owner}: resolution must be {RESOLUTION_RULE}, got {resolution!r}; "
            f"resize your images to e.g. 32, 64 or 128."
        )


def level_widths(resolution, base_width, min_width):
    """Channels at 4, 8, ..., resolution px: base_width halved per doubling, floored at min_width."""
    widths, size, width = [], 4, base_width
    while size <= resolution:
        widths.append(max(width, min_width))
        size, width = size * 2, width // 2
    return widths
