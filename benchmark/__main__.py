"""``python -m benchmark train CONFIG ...`` is ``rdbench train CONFIG ...``."""

import sys

from rdbench.cli import main

sys.exit(main(packages=("benchmark",)))
