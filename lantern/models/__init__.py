"""Models built on lantern's staged ops: :mod:`lantern.models.llama` (a Llama-3-architecture decoder)."""
from . import llama
from .llama import LlamaConfig

__all__ = ["llama", "LlamaConfig"]
