"""Cross-validation folds of a prepared dataset (``python -m ray_jobs.prepare_data --folds K``).

The photos are dealt into ``K`` folds (:func:`assign_folds`); each fold gets a manifest that
trains on the other folds' photos and validates on this fold's composites (:func:`fold_rows`),
and :data:`FOLDS_FILE` records them for ``python -m ray_jobs.evaluate --folds``. No Ray here.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from matting_lib import io
from matting_lib.data.manifest import build_manifest


def assign_folds(names: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """``k`` folds of the photos: a seeded permutation of the sorted names dealt round-robin,
    so fold sizes differ by at most one. Each fold's names are sorted."""
    order = np.random.default_rng([seed, 3]).permutation(sorted(names)).tolist()
    return [sorted(order[i::k]) for i in range(k)]


FOLDS_FILE = "folds.json"
"""Written with ``--folds``: the folds (photo names), each fold's validation composites
(``val_samples``), their manifests and the options, for ``python -m ray_jobs.evaluate --folds``
(which scores the photos, or these composites, each with its fold's model)."""


def fold_rows(rows: Sequence[dict], provenance: Sequence[dict], fold: Sequence[str]) -> list[dict]:
    """Manifest rows of one fold: train rows made without any of ``fold``'s photos (procedural
    ones included), and the val rows made of them (composites of those photos)."""
    fg = {m["name"]: m["fg"] for m in provenance}
    held = set(fold)
    return [r for r in rows if (r["split"] == "train") != (fg.get(r["name"]) in held)]


def write_folds(out: str, seed: int, foregrounds: str, folds: list[list[str]], provenance: Sequence[dict], log) -> list[str]:
    """``manifest.jsonl`` of the whole output ``out``, ``folds/fold<k>.jsonl`` per fold (train on the
    other folds' photos, validate on this fold's composites) and ``folds.json``."""
    rows = build_manifest(out, splits=("train", "val"), progress=False)
    uris = []
    for k, fold in enumerate(folds):
        uri = io.join(out, "folds", f"fold{k}.jsonl")
        part = fold_rows(rows, provenance, fold)
        io.write_text(uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in part))
        n_train = sum(r["split"] == "train" for r in part)
        log(f"fold {k}: {n_train} train / {len(part) - n_train} val rows -> {uri}")
        uris.append(uri)
    fg = {m["name"]: m["fg"] for m in provenance if m["split"] == "val"}
    val_samples = [sorted(n for n, f in fg.items() if f in set(fold)) for fold in folds]
    doc = {"k": len(folds), "seed": seed, "folds": folds, "val_samples": val_samples, "manifests": uris,
           "foregrounds": foregrounds}
    io.write_text(io.join(out, FOLDS_FILE), json.dumps(doc, indent=1) + "\n")
    return uris


def read_folds(uri: str) -> tuple[tuple[str, int], ...]:
    """(name, fold) pairs from a :data:`FOLDS_FILE`: its photos and, when listed, its validation
    composites (``val_samples``), each in its photo's fold.

    Raises:
        ValueError: unreadable, malformed, or listing no photo (the message names ``uri``).
    """
    try:
        doc = json.loads(io.read_text(uri))
        groups = [list(f) + list(v) for f, v in zip(doc["folds"], doc.get("val_samples") or [[]] * len(doc["folds"]))]
        pairs = tuple((str(n), k) for k, names in enumerate(groups) for n in names)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read folds from {uri}: {e}") from None
    if not pairs:
        raise ValueError(f"{uri} lists no photos")
    return pairs
