"""IR-to-IR passes that any backend (and AD, before it differentiates) may run. Each is ``Module -> Module``."""
from .accumulate import forward_single_accumulations
from .dce import eliminate_dead_code
from .empty import empty_values_as_fills
from .fuse import fuse_elementwise
from .hoist import hoist_loop_invariants
from .inline import inline_calls, recursive_functions
from .layout import transposes_cancelled
from .one_hot import one_hot_products_as_gathers
from .products import canonical_products, column_gathers_as_rows
from .remat import recompute_after_continuations
from .sink import fills_where_needed
from .unit_axes import unit_reductions_as_reshapes

__all__ = ["canonical_products", "column_gathers_as_rows", "eliminate_dead_code", "empty_values_as_fills",
           "fills_where_needed", "forward_single_accumulations", "fuse_elementwise", "hoist_loop_invariants", "inline_calls",
           "one_hot_products_as_gathers", "recompute_after_continuations", "recursive_functions",
           "transposes_cancelled", "unit_reductions_as_reshapes"]
