"""``python -m analysis evaluate|report|demo|kp ...`` is ``rdbench evaluate|report|...``."""

import sys

from rdbench.cli import main

sys.exit(main(packages=("analysis",)))
