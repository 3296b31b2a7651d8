"""``python -m ift`` (and ``torchrun -m ift run RECIPE``) is the ``ift`` command."""

import sys

from ift.cli import main

sys.exit(main())
