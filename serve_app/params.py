"""Request parameters of /v1/matte and /v1/batch: the seeds' post-processing plus model and size.

Parameters come from the query string (documented in the OpenAPI page) and, for multipart
uploads, from text form fields, which win over the query. Any bad value -> 422 naming it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Mapping, Optional

from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator

from matting_lib.postprocess import PostprocessParams
from matting_lib.refine.hints import parse_box
from serve_app.errors import ApiError


MIN_SIDE = 32
MAX_SIDE = 2048
"""The largest ``max_side`` (long side, px, the network works at) a request may ask for: the one
limit the check, the OpenAPI schema, the web UI (from ``GET /v1/models``) and the docs use.
It bounds a model replica's memory: one 6000x6000 request at 2048 peaks at about 2 GB of RSS, where
4096 took 5.6-5.8 GB (``bench/memory.py``; ``bench/RELIABILITY.md``, "Memory of the largest request")."""


_PARAMS_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
# allow_inf_nan=False: 'nan' or 'inf' for a float is refused as "Input should be a finite number",
# not with a range message ("should be <= 1") that a NaN cannot act on. Not strict: query strings
# and form fields arrive as text ("5", "true").

_POSTPROCESS_FIELDS = tuple(PostprocessParams.__pydantic_fields__)

_PostprocessFields = create_model(
    "_PostprocessFields", __config__=_PARAMS_CONFIG, __module__=__name__,
    **{name: (f.annotation, f) for name, f in PostprocessParams.__pydantic_fields__.items()},
)
"""matting_lib's :class:`~matting_lib.postprocess.PostprocessParams` as a pydantic model: its eight
fields (types, bounds, defaults, descriptions, the colour check) are declared there, once."""


class MatteParams(_PostprocessFields):
    """What to compute and how to deliver it: the post-processing fields of
    :class:`matting_lib.postprocess.PostprocessParams`, then the model, size, refinement, hints
    and history of this request."""

    model_config = _PARAMS_CONFIG

    model: str = Field("auto", description="'auto' (brightness routing) or a model name from /v1/models to force it.")
    max_side: Optional[int] = Field(
        None, ge=MIN_SIDE, le=MAX_SIDE,
        description=f"Long side (px) the network works at, in [{MIN_SIDE}, {MAX_SIDE}]; default from the server config.",
    )
    """Absent (None) = the server's configured side: the pipeline sends :data:`matting_lib.resize.KEEP`
    to the model for it. The HTTP API has no "no cap" (MAX_SIDE bounds memory)."""
    refine: Literal["auto", "learned", "classical", "off"] = Field(
        "auto", description="Full-resolution refinement of the network's alpha: 'auto' (the model's learned refiner "
        "when it has one, else 'off'), 'learned', 'classical' (colour segmentation + guided filter, slower) or 'off' "
        "(the working-size alpha upsampled). See models/README.md for quality and time of each.",
    )
    box: Optional[str] = Field(
        None, description="A box around the subject, 'x0,y0,x1,y1' in image pixels (x1, y1 exclusive): outside it the "
        "matte is 0, and the network sees the box's crop at its working size, so a small subject gets as many pixels as "
        "a large one. Strokes come as a second multipart file field 'hints' (see serve_app/README.md).",
    )
    history: bool = Field(True, description="Record the result in the history.")

    @field_validator("box")
    @classmethod
    def _box(cls, v: Optional[str]) -> Optional[str]:
        if v in (None, ""):
            return None
        return ",".join(str(c) for c in parse_box(v))  # HintError (a ValueError) names the accepted form

    @field_validator("refine", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("format", mode="before")
    @classmethod
    def _jpg(cls, v: Any) -> Any:
        return "jpeg" if isinstance(v, str) and v.lower() in ("jpg", "jpeg") else (v.lower() if isinstance(v, str) else v)

    @field_validator("background", mode="before")
    @classmethod
    def _blank_colour(cls, v: Any) -> Any:
        return None if v == "" else v  # an empty form field = the default (white)

    def postprocess(self) -> PostprocessParams:
        """The matting_lib post-processing settings."""
        return PostprocessParams(**self.model_dump(include=set(_POSTPROCESS_FIELDS)))

    def result_key(self) -> str:
        """Everything that changes the result bytes, as a stable string (for the cache)."""
        data = self.model_dump(exclude={"history"})
        return json.dumps(data, sort_keys=True)


MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def merge_params(query: MatteParams, form: Mapping[str, str]) -> MatteParams:
    """Query parameters overridden by multipart text fields; 422 naming the bad field."""
    if not form:
        return query
    data = query.model_dump(exclude_unset=True)
    data.update(form)
    try:
        return MatteParams.model_validate(data)
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ApiError(422, "; ".join(parts)) from None


def check_against_limits(params: MatteParams, model_names: list[str]) -> MatteParams:
    """Checks that need the server config: a known model, named in any case (``BASE`` as ``format=PNG``
    is). Returns the parameters with the model's configured name (or ``auto``), which is what routing,
    the cache key, the headers and the history then use. (``max_side`` is checked against
    :data:`MAX_SIDE` by :class:`MatteParams`' pydantic field bounds when the request is parsed, so
    every value over it gets the same message.)"""
    wanted = params.model.casefold()
    name = "auto" if wanted == "auto" else next((n for n in model_names if n.casefold() == wanted), None)
    if name is None:
        raise ApiError(422, f"model: unknown model {params.model!r}; use 'auto' or one of {', '.join(model_names)}")
    return params if name == params.model else params.model_copy(update={"model": name})


def content_key(data: bytes, params: MatteParams, versions: Mapping[str, str], hints: bytes | None = None) -> str:
    """Cache key: the image's SHA-256, the result parameters, the hints image (strokes), and the
    checkpoint each model serves now."""
    h = hashlib.sha256(data)
    h.update(b"\0" + params.result_key().encode())
    h.update(b"\0" + (hashlib.sha256(hints).digest() if hints is not None else b"-"))
    h.update(b"\0" + json.dumps(dict(versions), sort_keys=True).encode())
    return h.hexdigest()
