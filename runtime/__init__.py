"""The C runtime that generated code includes (``lantern_runtime.h``)."""
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parent
RUNTIME_HEADER = RUNTIME_DIR / "lantern_runtime.h"
