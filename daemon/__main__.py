"""``python -m hostscope.daemon`` is the ``hostscope`` command."""

import sys

from .entry import main

sys.exit(main())
