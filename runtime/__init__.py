"""The C runtime that generated code includes (``lantern_runtime.h``), and its error codes.

The codes are defined once, in the header's ``enum``; Python reads them from there.
"""
import re
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parent
RUNTIME_HEADER = RUNTIME_DIR / "lantern_runtime.h"
#: Every header a generated module may include (their text is part of its cache key).
RUNTIME_HEADERS = sorted(RUNTIME_DIR.glob("*.h"))


def _error_codes() -> dict[str, int]:
    enum = re.search(r"enum\s*\{([^}]*LT_OK[^}]*)\}", RUNTIME_HEADER.read_text())
    assert enum, "lantern_runtime.h lost its error-code enum"
    return {name: int(value) for name, value in re.findall(r"(LT_\w+)\s*=\s*(\d+)", enum.group(1))}


#: ``LT_OK``, ``LT_ERR_INDEX``, ... -> the value ``lantern_entry`` returns for it.
ERROR_CODES: dict[str, int] = _error_codes()
