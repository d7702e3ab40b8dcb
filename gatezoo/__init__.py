"""gatezoo: gated recurrent cells as data-driven preconditioners, measured inside training.

The public API is re-exported here; see README.md for the two-command quick start.
"""

from gatezoo.models import *  # noqa: F403
from gatezoo.models import __all__ as _models_all

__version__ = "0.1.0"

__all__ = [*_models_all, "__version__"]
