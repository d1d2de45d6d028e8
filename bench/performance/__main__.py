"""``python -m bench.performance``: run the performance benchmark (see `bench.performance`)."""

import sys

from bench.performance.command import main

if __name__ == "__main__":
    sys.exit(main())
