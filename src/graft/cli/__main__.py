"""``python -m graft.cli …`` (what ``graft compare`` runs each fit as)."""

import sys

from graft.cli.app import main

sys.exit(main())
