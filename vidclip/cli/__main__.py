"""``python -m vidclip.cli <subcommand> ...``: same as the ``vidclip`` console script."""
import sys

from . import main

sys.exit(main())
