"""``python -m bench --preset NAME``: see ``bench.run``."""
import sys

from bench.run import main

sys.exit(main())
