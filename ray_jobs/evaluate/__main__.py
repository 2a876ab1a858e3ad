"""``python -m ray_jobs.evaluate``: see :mod:`ray_jobs.evaluate`."""

from ray_jobs.evaluate.cli import main


raise SystemExit(main())
