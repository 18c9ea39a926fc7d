"""sifluoro: guidance and dose tracking for fluoroscopy-guided sacroiliac joint injections."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sifluoro.config import Settings
    from sifluoro.engine import Engine

__all__ = ["Engine", "Settings"]


def __getattr__(name: str):
    # lazily: the command line's --help and the dose/audit commands need no imaging import
    if name == "Engine":
        from sifluoro.engine import Engine

        return Engine
    if name == "Settings":
        from sifluoro.config import Settings

        return Settings
    raise AttributeError(f"module 'sifluoro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
