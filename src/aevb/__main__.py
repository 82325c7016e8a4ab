"""``python -m aevb``: the ``aevb`` command."""
import sys

from aevb.cli import main

sys.exit(main())
