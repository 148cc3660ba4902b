"""``python -m bwfast``: the same entry point as the ``bwfast`` script."""
import sys

from bwfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
