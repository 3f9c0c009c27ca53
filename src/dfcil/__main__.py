"""``python -m dfcil`` = the ``dfcil`` command."""

import sys

from dfcil.cli import main

sys.exit(main())
