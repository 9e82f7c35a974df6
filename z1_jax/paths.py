"""Local paths and Cloud Storage URIs (`gs://bucket/...`) behind one pathlib-style type.

Orbax (through tensorstore), TensorBoard (tensorboardX), `datasets` and `etils.epath` read and
write `gs://` URIs themselves, so a pod run can keep its checkpoints, metrics and data in a
bucket that every worker sees. Code that turns such a URI into a `pathlib.Path` (or makes it
absolute) silently breaks it into a local path `gs:/bucket/...`: `as_path` keeps a URI as an
`etils.epath.Path` (the pathlib API over gcsfs; the `tpu` extra installs gcsfs) and makes a
local path absolute.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(path: str | os.PathLike) -> bool:
  """`gs://...` (any `scheme://`): a location that is not a local path."""
  return "://" in str(path)


def as_path(path: str | os.PathLike):
  """A `pathlib.Path` (absolute, `~` expanded) for a local path or a `file://` URI (which
  `etils.epath` does not register); an `epath.Path` for any other URI."""
  if str(path).startswith("file://"):
    return Path(str(path)[len("file://"):]).expanduser().absolute()
  if is_uri(path):
    from etils import epath
    return epath.Path(str(path))
  return Path(path).expanduser().absolute()
