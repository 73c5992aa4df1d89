"""Where images come from, as one line of text shared by train, evaluate and segment.

    synthetic              the built-in scenes (keras_layered.data.synthetic)
    folder:PATH            image files under PATH (keras_layered.data.folder)
    tfds:NAME[/CONFIG]     a TensorFlow Datasets dataset

Only the kind before the first ":" is interpreted, so PATH may itself contain ":".
"""

import dataclasses
from pathlib import PurePath

__all__ = ["DataSpec", "parse_data_spec"]

_FORMS = ("synthetic                e.g. synthetic\n"
          "  folder:PATH              e.g. folder:data/CUB_200_2011\n"
          "  tfds:NAME[/CONFIG]       e.g. tfds:caltech_birds2011 or tfds:lsun/car")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed data source. kind: "synthetic", "folder" or "tfds".

    path_or_name: None for synthetic, the folder as written for folder (not resolved or checked
    here), "NAME" or "NAME/CONFIG" for tfds.
    """

    kind: str
    path_or_name: str | None = None

    def __str__(self):
        return self.kind if self.path_or_name is None else f"{self.kind}:{self.path_or_name}"

    @property
    def short_name(self) -> str:
        """A name for run directories and output files: "synthetic", the folder's name (its parent's
        for a folder named images), or the dataset with "/" as "_" ("lsun_car")."""
        if self.kind == "synthetic":
            return "synthetic"
        if self.kind == "tfds":
            return self.path_or_name.replace("/", "_")
        path = PurePath(self.path_or_name.rstrip("/\\") or "/")
        if path.name.casefold() == "images" and path.parent.name:
            path = path.parent
        return path.name or "folder"


def parse_data_spec(text: str) -> DataSpec:
    """"synthetic", "folder:PATH" or "tfds:NAME[/CONFIG]" -> DataSpec; anything else raises ValueError.

    Surrounding whitespace is ignored; kinds are lower case. str(spec) gives the text back.
    """
    if not isinstance(text, str):
        raise ValueError(f"data source must be a string, got {text!r}; accepted forms:\n  {_FORMS}")
    kind, colon, rest = text.strip().partition(":")
    if kind == "synthetic" and not colon:
        return DataSpec("synthetic")
    if kind == "folder" and rest:
        return DataSpec("folder", rest)
    name, slash, config = rest.partition("/")
    if kind == "tfds" and name and (config or not slash) and not any(c.isspace() for c in rest):
        return DataSpec("tfds", rest)
    looks_like_path = not colon and ("/" in kind or "\\" in kind)
    hint = f" (for a folder of images, write folder:{kind})" if looks_like_path else ""
    raise ValueError(f"unknown data source {text!r}{hint}; accepted forms:\n  {_FORMS}")
