"""Mattes that users corrected, kept as training data in the seed format, one folder per tenant.

    store = CorrectionStore("s3://bucket/corrections")          # or a local folder
    record = store.add("public", rgb, alpha, name="cat.jpg", history_id=..., model="base")
    root = store.folder("public")     # a seed-format dataset: images/, masks/, trimaps/, train.txt

Layout under the store's root (a local folder or ``s3://bucket/prefix``)::

    <tenant>/images/<id>.png     the image as the service decoded it (RGB, EXIF orientation applied)
    <tenant>/masks/<id>.png      the corrected alpha, 8-bit grey (255 = opaque)
    <tenant>/trimaps/<id>.png    derived: unknown (128) within TRIMAP_BAND px of any soft or edge pixel
    <tenant>/records/<id>.json   what and who: created, name, history_id, model, box, tenant
    <tenant>/train.txt           every id, rewritten after each save

A **tenant** is who saved the correction: :func:`tenant_of` an API key (a hash, never the key),
``public`` on a service without one. Each tenant's folder is its own dataset, so one tenant's
corrections train another's model only when a job is told to read both
(``ray_jobs.learn_corrections``). Files are written before their record, and the record before
``train.txt``, so whatever a list names exists; the records are the authority (``train.txt`` is
rebuilt from them, and two saves at the same moment may each write it before the other's record).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np

from matting_lib import io
from matting_lib.data.encode import encode_png
from matting_lib.data.synthesis import trimap_from_alpha

PUBLIC_TENANT = "public"
"""The tenant of corrections saved on a service without an API key."""
TRIMAP_BAND = 7
"""Pixels around every soft (0 < alpha < 255) or edge pixel that the derived trimap marks unknown
(:func:`matting_lib.data.synthesis.trimap_from_alpha`, the dataset writer's own)."""
ID_RE = re.compile(r"^[0-9a-f]{32}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CorrectionError(ValueError):
    """A correction that cannot be stored (sizes differ, an empty image, a bad tenant)."""


def tenant_of(api_key: str) -> str:
    """The tenant name of an API key: ``key-`` and 16 hex digits of its SHA-256 (the key itself is
    never stored); :data:`PUBLIC_TENANT` for no key."""
    if not api_key:
        return PUBLIC_TENANT
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Correction:
    """One saved correction (its record)."""

    id: str
    tenant: str
    created: float
    name: str
    width: int
    height: int
    history_id: str = ""
    model: str = ""
    box: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        return d


class CorrectionStore:
    """The corrections of every tenant under one root (see the module docstring)."""

    def __init__(self, root: str) -> None:
        if not root:
            raise CorrectionError("the corrections store needs a root (a local folder or s3://bucket/prefix)")
        self.root = root

    def folder(self, tenant: str) -> str:
        """The tenant's seed-format dataset root."""
        if not TENANT_RE.fullmatch(tenant):
            raise CorrectionError(f"bad tenant name {tenant!r} (letters, digits, '-' and '_')")
        return io.join(self.root, tenant)

    def add(self, tenant: str, rgb: np.ndarray, alpha: np.ndarray, name: str = "", history_id: str = "",
            model: str = "", box: str = "") -> Correction:
        """Store an image and its corrected uint8 alpha (the same height and width); returns the record."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise CorrectionError(f"the image must be uint8 RGB, got {rgb.dtype} {rgb.shape}")
        if alpha.shape != rgb.shape[:2] or alpha.dtype != np.uint8:
            raise CorrectionError(f"the corrected matte is {alpha.shape[1] if alpha.ndim > 1 else '?'}x{alpha.shape[0]}, "
                                  f"the image {rgb.shape[1]}x{rgb.shape[0]}: they must be the same size")
        root = self.folder(tenant)
        rec = Correction(uuid.uuid4().hex, tenant, time.time(), name[:255], int(rgb.shape[1]), int(rgb.shape[0]),
                         history_id[:64], model[:64], box[:64])
        io.write_bytes(io.join(root, "images", f"{rec.id}.png"), encode_png(rgb))
        io.write_bytes(io.join(root, "masks", f"{rec.id}.png"), encode_png(alpha))
        io.write_bytes(io.join(root, "trimaps", f"{rec.id}.png"), encode_png(trimap_from_alpha(alpha, radius=TRIMAP_BAND)))
        io.write_text(io.join(root, "records", f"{rec.id}.json"), json.dumps(asdict(rec)) + "\n")
        self.write_list(tenant)
        return rec

    def list(self, tenant: str) -> list[Correction]:
        """The tenant's corrections, newest first (empty for a tenant with none)."""
        records = io.join(self.folder(tenant), "records")
        try:
            files = io.listdir(records)
        except FileNotFoundError:
            return []
        out = []
        for f in files:
            stem = f[:-5]
            if f.endswith(".json") and ID_RE.fullmatch(stem):
                out.append(Correction(**json.loads(io.read_text(io.join(records, f"{stem}.json")))))
        return sorted(out, key=lambda c: (-c.created, c.id))

    def write_list(self, tenant: str) -> str:
        """Rewrite the tenant's ``train.txt`` from its records (oldest first); returns its URI."""
        uri = io.join(self.folder(tenant), "train.txt")
        io.write_text(uri, "".join(f"{c.id}\n" for c in reversed(self.list(tenant))))
        return uri

    def tenants(self) -> list[str]:
        """Tenants with at least one correction."""
        try:
            names = io.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if TENANT_RE.fullmatch(n) and self.list(n))
