"""simcalkv for PyTorch: KV-cache compression (similarity-aware merging with bias calibration).

The C++ library's policies compress one layer of a ragged per-head cache (`compress`), and its
biased attention reads it (`attend`); `RaggedLayer` holds one layer's compressed cache on any
device; `simcalkv.hf` plugs both into Hugging Face transformers (a Cache, an attention function
and a kvpress-style press).
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401
except ImportError as error:  # a source checkout without `pip install ./python`
    raise ImportError(
        "simcalkv: the compiled extension simcalkv._C is missing or does not load "
        f"({error}); install the package with `pip install --no-build-isolation ./python` "
        "(see docs/python.md)"
    ) from error

from .ops import attend, compress, policy_names
from .ragged import RaggedLayer

__all__ = ["attend", "compress", "policy_names", "RaggedLayer"]
__version__ = "0.1.0"
