"""`python -m simulations.cli` (the tests and benchmarks run `fedgen` this way)."""

import sys

from simulations.cli import main

sys.exit(main())
