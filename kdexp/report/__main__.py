"""`python -m kdexp.report`: the same as the `kdexp-report` command."""

import sys

from kdexp.cli.entry import report

sys.exit(report())
