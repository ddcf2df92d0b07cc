"""IR-to-IR passes that prepare a module for C. Each is ``Module -> Module``."""
from .accumulate import forward_single_accumulations
from .dce import eliminate_dead_code
from .fuse import fuse_elementwise
from .inline import inline_calls

__all__ = ["eliminate_dead_code", "forward_single_accumulations", "fuse_elementwise", "inline_calls"]
