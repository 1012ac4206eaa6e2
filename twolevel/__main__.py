"""``python -m twolevel ...``: the ``twolevel`` command line (:mod:`twolevel.workflows.cli`)."""

import sys

from twolevel.workflows.cli import main

sys.exit(main())
