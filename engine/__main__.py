"""``python -m engine``: the same command line as ``kvengine``."""

import sys

from engine.cli import main

sys.exit(main())
