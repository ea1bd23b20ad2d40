"""``python -m pipeline.simulate``: see :func:`pipeline.simulate.main`."""

import sys

from pipeline.simulate import main

sys.exit(main())
