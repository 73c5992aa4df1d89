"""Alpha compositing of the generator's layers."""


def composite(background, foreground, mask):
    """bg * (1 - mask) + fg * mask: (B, H, W, 3), (B, H, W, 3), (B, H, W, 1) -> (B, H, W, 3)."""
    return background * (1.0 - mask) + foreground * mask
