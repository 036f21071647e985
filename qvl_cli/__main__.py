"""Run the ``qvl`` command: ``python -m qvl_cli``."""

import sys

from qvl_cli.main import main

sys.exit(main())
