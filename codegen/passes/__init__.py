"""IR-to-IR passes for the C backend (layouts its kernels read fastest). Each is ``Module -> Module``.

The backend-neutral passes are in :mod:`lantern.ir.passes`.
"""
from .outline import outline_long_functions
from .row_products import row_products_read_transposed

__all__ = ["outline_long_functions", "row_products_read_transposed"]
