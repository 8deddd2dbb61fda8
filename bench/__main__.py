"""`python -m bench`: the one command that runs the benchmark."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
