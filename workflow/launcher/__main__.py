"""`python -m workflow.launcher ...` (see workflow.launcher.cli)."""

import sys

from workflow.launcher.cli import main

sys.exit(main())
