"""The ``daskmask`` command (also ``python -m daskmask``): ``demo``, ``run`` and ``bids``.

See :mod:`daskmask.cli._main` for the exit statuses, :mod:`daskmask.cli._run`
and :mod:`daskmask.cli._bids` for the batch commands.
"""

from __future__ import annotations

import sys

from daskmask.cli._main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
