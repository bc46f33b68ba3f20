"""``python -m graft``: the ``graft`` command (also what ``torchrun -m graft`` runs)."""

import sys

from graft.cli import main

sys.exit(main())
