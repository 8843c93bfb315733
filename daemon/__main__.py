"""``python -m hostscope.daemon`` is the ``hostscope`` command."""

import sys

from .cli import main

sys.exit(main())
