import sys

from kdexp.entry import kdexp

sys.exit(kdexp())
