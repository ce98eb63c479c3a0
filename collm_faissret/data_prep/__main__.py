"""``python -m collm_faissret.data_prep NAME [options]``: same as ``collm-prepare``."""
import sys

from . import main

sys.exit(main())
