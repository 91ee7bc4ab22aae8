"""``python -m multiscope``: the same as the ``multiscope`` command."""

import sys

from multiscope.cli import main

sys.exit(main())
