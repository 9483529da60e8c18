"""`python3 -m opik_cipx` and the zipapp entry point."""

import sys

from opik_cipx.cli import main

sys.exit(main())
