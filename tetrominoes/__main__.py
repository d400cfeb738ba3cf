"""``python -m tetrominoes generate|info|show ...`` is ``rdbench data generate|info|show ...``."""

import sys

from rdbench.cli import main

sys.exit(main(["data", *sys.argv[1:]], packages=("tetrominoes",)))
