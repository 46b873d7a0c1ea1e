"""``python -m pipeline ...`` is the same as ``sdedit ...``."""

import sys

from pipeline.cli import main

sys.exit(main())
