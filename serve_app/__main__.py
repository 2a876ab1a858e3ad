"""``python -m serve_app``: see :mod:`serve_app.run`."""

import sys

from serve_app.run import main

sys.exit(main())
