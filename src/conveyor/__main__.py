"""`python -m conveyor` behaves like the `conveyor` command."""

import os
import sys

from conveyor.cli import main
from conveyor.process_exit import end_with_the_session, exit_process

if __name__ == "__main__":
    # Like the console script, and like plain `pytest`, do not import from the working
    # directory just because `python -m` put it first on sys.path.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    end_with_the_session()
    exit_process(main())
