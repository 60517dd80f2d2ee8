"""The error raised for weight files that cannot be loaded."""

from __future__ import annotations


class ModelLoadError(ValueError):
  """A weight file is malformed, truncated, incomplete or unsupported.

  The message always names the file and what is wrong with it.
  """
