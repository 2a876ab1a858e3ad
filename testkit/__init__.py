"""Support code shared by the tests and the benchmarks (``bench/``), and the rehearsal of infra's guide.

- :mod:`testkit.env`: the environment a test or benchmark process needs before it imports boto or
  Ray (loopback S3 credentials, short S3 timeouts, Ray token auth, loopback-only cluster).
- :mod:`testkit.data`: a small synthetic image/alpha pair and a seed-format dataset writer.
- :mod:`testkit.s3`: a moto S3 server on loopback that can be stopped and started again.
- :mod:`testkit.serve`: tiny checkpoints, synthetic photos, the test Serve config, deploy and wait.
- :mod:`testkit.hostile`: the hostile-upload corpus and how replies to it are judged.
- :mod:`testkit.local_ray`: a local Ray head on free loopback ports, and a stop that ends only that cluster.
- :mod:`testkit.rehearse`: ``python -m testkit.rehearse``, infra/README.md's guide end to end on one
  machine (a local cluster, moto S3 for the bucket).

Nothing here is imported by the shipped packages (``matting_lib``, ``ray_jobs``, ``serve_app``).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (the checkout this package sits in)."""
