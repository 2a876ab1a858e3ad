"""``python -m ray_jobs.tune``: see :mod:`ray_jobs.tune`."""

from ray_jobs.tune.runner import main

raise SystemExit(main())
