import sys

from rdbench.cli import main

sys.exit(main())
