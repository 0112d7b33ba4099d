"""Deep Karaoke: vocal separation with a mask-predicting DNN (Simpson, Roma, Plumbley 2015).

`from karaoke import Separator` is the entry point for separating songs (`karaoke.separator`).
Nothing heavy is imported here: `Separator` and `Separation` load on first use, so the command
line starts fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Separation", "Separator", "__version__"]

_LAZY = {"Separator": "karaoke.separator", "Separation": "karaoke.separate"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'karaoke' has no attribute {name!r}")
