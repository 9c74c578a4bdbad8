"""sympow: symmetric-power linear attention and its relatives, in three forms, on any array library.

Public names: ``attention``, ``State``, the named variants, ``backends``; see the README and math.md.
"""

from . import backends
from .api import attention
from .spec.state import State
from .variants import based, conformal_sympow, leapformer, rebased

__all__ = ["State", "attention", "backends", "based", "conformal_sympow", "leapformer", "rebased"]
__version__ = "0.1.0"
