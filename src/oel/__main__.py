"""`python -m oel ...`: the `oel` command without relying on the console script being on PATH."""

import sys

from oel.cli import main

if __name__ == "__main__":
    sys.exit(main())
