"""Releasing placement groups that stopped trials leave behind, from Ray's private GCS table.

PINNED TO RAY 2.60.0 (the ``ray[...]==2.60.0`` pin in pyproject.toml). This module reads
``ray._private.state.state._connect_and_get_accessor().get_placement_group_table()`` and
decodes its rows with ``ray.core.generated.gcs_pb2.PlacementGroupTableData``: private API that
a Ray upgrade may rename or change. It is kept here, alone, so that an upgrade has one place to
check; ``tests/test_tune_placement_groups.py`` fails when the pin moves without this module
being checked against the new version (:data:`RAY_VERSION`), and exercises the release on a
live cluster.
"""

from __future__ import annotations

import time
from typing import Any


RAY_VERSION = "2.60.0"
"""The Ray version this module's private-API reads were written and checked against."""


def release_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; returns how many.

    A trial that ASHA stops is killed, and its Train controller with it. The controller's
    worker placement group is meant to be removed by Train's detached PlacementGroupCleaner,
    which needs the State API (a dashboard, and an unambiguous cluster address: it fails on a
    local cluster started without dashboard, or with several clusters on one machine). Ray
    itself frees such groups only when the job ends, so a sweep would drain its own cluster
    and hang. Only groups created by an actor (not a driver) of this job that has since died
    are removed: nothing can use them any more. Reads Ray's GCS table (private API, Ray 2.60).
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        orphaned = pg.creator_actor_dead and not ray.ActorID(pg.creator_actor_id).is_nil() and not pg.is_detached
        if orphaned and pg.creator_job_id.hex() == job and pg.state != gcs_pb2.PlacementGroupTableData.REMOVED:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
    return removed


def orphan_release_callback(every_s: float = 2.0) -> Any:
    """A Tune callback running :func:`release_orphaned_placement_groups` every ``every_s`` seconds."""
    from ray import tune

    class ReleaseOrphans(tune.Callback):
        def __init__(self) -> None:
            self.next_check = 0.0

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() >= self.next_check:
                self.next_check = time.monotonic() + every_s
                release_orphaned_placement_groups()

    return ReleaseOrphans()
