"""IR-to-IR passes that prepare a module for C. Each is ``Module -> Module``."""
from .accumulate import forward_single_accumulations
from .dce import eliminate_dead_code
from .empty import empty_values_as_fills
from .fuse import fuse_elementwise
from .hoist import hoist_loop_invariants
from .inline import inline_calls
from .one_hot import one_hot_products_as_gathers
from .row_products import row_products_read_transposed

__all__ = ["eliminate_dead_code", "empty_values_as_fills", "forward_single_accumulations", "fuse_elementwise",
           "hoist_loop_invariants", "inline_calls", "one_hot_products_as_gathers", "row_products_read_transposed"]
