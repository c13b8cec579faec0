"""`python -m vpeft ...`: the same command line as the `vpeft` console script."""

import sys

from vpeft.cli import main

sys.exit(main())
