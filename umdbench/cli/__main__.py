"""``python -m umdbench.cli``: the same entry point as the ``umdbench`` command."""

import sys

from umdbench.cli import main

sys.exit(main())
