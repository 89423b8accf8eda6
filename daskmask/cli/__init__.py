"""The ``daskmask`` command (also ``python -m daskmask``): ``demo``, ``run`` and ``bids``.

See :mod:`daskmask.cli._main` for the exit statuses, :mod:`daskmask.cli._run`
and :mod:`daskmask.cli._bids` for the batch commands.
"""

from __future__ import annotations

import gc
import sys

# The command imports the scientific stack (about 1.5 s): Python's cyclic garbage
# collector would walk the objects those imports create over and over (three full
# collections, 0.1-0.2 s; benchmarks/README.md, "Many runs"), though modules hold no
# garbage. It pauses during the imports, and what they made is then frozen (left out of
# the collections; the first main() gives it back to the collector when it returns).
_collecting = gc.isenabled()
gc.disable()
try:
    from daskmask.cli._main import main
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
