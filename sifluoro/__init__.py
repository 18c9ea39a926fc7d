"""sifluoro: guidance and dose tracking for fluoroscopy-guided sacroiliac joint injections."""
from sifluoro.config import Settings
from sifluoro.engine import Engine

__all__ = ["Engine", "Settings"]
