import sys

from kdexp.cli.entry import kdexp

sys.exit(kdexp())
