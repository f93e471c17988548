"""``python -m kvstore``: the same command line as ``kvstore``."""

import sys

from kvstore.cli import main

sys.exit(main())
