"""``python -m bench``: run the batch-size benchmark (see `bench.run`)."""

import sys

from bench.run import main

if __name__ == "__main__":  # worker processes started by "spawn" re-import this module
    sys.exit(main())
