"""``python -m funcnet.app.cli``: the `funcnet` command."""

import sys

from funcnet.app.cli import main

sys.exit(main())
