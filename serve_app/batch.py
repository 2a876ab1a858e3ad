"""The /v1/batch result archive: every result plus a per-file log (``log.csv`` and ``log.json``).

Archive layout::

    results/<input path with the output extension>   one per successful file
    log.csv, log.json                                 one row per input file, in upload order

Log columns: ``file`` (input name), ``output`` (path in the archive, empty on error),
``status`` ('ok' or 'error'), ``http_status`` (what /v1/matte would have answered),
``model``, ``brightness`` (mean luma in [0, 1]), ``cache`` ('hit'/'miss'), ``ms``
(processing time in milliseconds), ``error`` (the message, empty on success), ``empty``
(true when the model found no subject: the matte is essentially empty, see
:func:`matting_lib.postprocess.is_empty_matte`; empty on error) and ``notice`` (what to tell a
person about such a result).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import asdict, dataclass

LOG_FIELDS = ("file", "output", "status", "http_status", "model", "brightness", "cache", "ms", "error", "empty", "notice")


@dataclass(frozen=True)
class BatchRow:
    """One input file's outcome; ``body`` is the encoded result (None on error)."""

    file: str
    output: str
    status: str
    http_status: int
    model: str
    brightness: float | None
    cache: str
    ms: float
    error: str
    empty: bool | None = None
    notice: str = ""
    body: bytes | None = None

    def log(self) -> dict:
        d = asdict(self)
        d.pop("body")
        return d


def build_zip(rows: list[BatchRow]) -> bytes:
    """The archive described in the module docstring. Results are stored, not recompressed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for row in rows:
            if row.body is not None:
                zf.writestr(zipfile.ZipInfo(row.output), row.body, compress_type=zipfile.ZIP_STORED)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.log())
        zf.writestr("log.csv", text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        # Stored, like the results: the web UI reads log.json and the results out of the response
        # (serve_app/static/batchlog.js) without needing the browser to inflate.
        zf.writestr("log.json", json.dumps([r.log() for r in rows], indent=1), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()
