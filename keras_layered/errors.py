"""The package's error classes that modules of every layer raise (standard library only)."""

from pathlib import Path


class ConfigError(ValueError):
    """A config file or override that cannot be used as given."""


class UnreadableImageError(ValueError):
    """A file that Pillow cannot open or decode as an image."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read {path} as an image: {reason}")
        self.path = Path(path)
        self.reason = reason
