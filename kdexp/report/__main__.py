"""`python -m kdexp.report`: the same as the `kdexp-report` command."""

import sys

from kdexp.report.cli import main

sys.exit(main())
