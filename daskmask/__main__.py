"""``python -m daskmask`` is the ``daskmask`` command (:mod:`daskmask.cli`)."""

import sys

from daskmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
