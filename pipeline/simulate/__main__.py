"""``python -m secretscope.simulate``: see :func:`secretscope.simulate.main`."""

import sys

from secretscope.simulate import main

sys.exit(main())
