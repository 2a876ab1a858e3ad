"""ray_jobs.tune.placement_groups: the one place that reads Ray's private GCS table.

Pinned to the Ray version in pyproject.toml: the first test fails when the pin (or the installed
Ray) moves away from the version the module was checked against, so an upgrade re-checks it;
the second releases a real orphaned placement group on the test cluster.
"""

from __future__ import annotations

import re
import time

import pytest

from ray_jobs.tune.placement_groups import RAY_VERSION, release_orphaned_placement_groups
from testkit import ROOT


def test_private_api_module_is_pinned_to_the_ray_of_pyproject():
    import ray

    pin = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins ray[...]==X"
    assert pin.group(1) == RAY_VERSION == ray.__version__, (
        f"Ray pinned at {pin.group(1)}, installed {ray.__version__}, placement_groups.py checked against {RAY_VERSION}: "
        "check its private GCS reads against the new version, then update RAY_VERSION"
    )


@pytest.mark.timeout(120)
def test_releases_only_groups_whose_creating_actor_died(ray_cluster):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Maker:  # defined here: pickled by value, so workers need not import the test module
        def make(self) -> str:
            from ray.util.placement_group import placement_group as make_group

            pg = make_group([{"CPU": 0.01}])
            ray.get(pg.ready(), timeout=60)
            return pg.id.hex()

    own = placement_group([{"CPU": 0.01}])  # the driver's own: alive creator, never released
    ray.get(own.ready(), timeout=60)
    maker = Maker.remote()
    orphan = ray.get(maker.make.remote(), timeout=60)
    try:
        assert release_orphaned_placement_groups() == 0  # its creator is alive
        ray.kill(maker)
        deadline, released = time.monotonic() + 60, 0
        while not released and time.monotonic() < deadline:
            released = release_orphaned_placement_groups()
            time.sleep(0.5)
        assert released == 1
        table = ray.util.placement_group_table()
        assert table[orphan]["state"] == "REMOVED"
        assert table[own.id.hex()]["state"] != "REMOVED"
        assert release_orphaned_placement_groups() == 0  # nothing left to release
    finally:
        remove_placement_group(own)
