"""The model deployment: one Serve deployment per configured model, dynamic batching, hot swap.

``MattingModel`` wraps a :class:`matting_lib.inference.predictor.Predictor`. Requests are uint8 RGB
arrays (decoded and checked by the ingress); answers are uint8 alphas (0-255) at the input's
size: every output format is 8-bit, and a quarter of the bytes of float32 makes the trip back
to the ingress cheaper (bench/serve.py).

Hot swap: the checkpoint URI is the deployment's ``user_config`` (``{"checkpoint": URI}``).
Changing it (``serve deploy`` with a new ``user_config``) calls :meth:`MattingModel.reconfigure`
on the running replicas: the new checkpoint loads in a worker thread while the old model
keeps answering, then one reference assignment switches. A batch already running finishes
on the model it started with, so no request fails and none mixes two models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from ray import serve

from matting_lib.config import to_dict
from matting_lib.refine import MODES as REFINE_MODES
from matting_lib.refine import resolve_mode
from matting_lib.refine.hints import HintError
from matting_lib.resize import KEEP, MaxSide
from serve_app.config import ModelDeploymentSettings
from serve_app.params import MAX_SIDE, MIN_SIDE
from serve_app.replica import TRIM_AFTER_PIXELS, checkpoint_label, parse_user_config, release_memory

if TYPE_CHECKING:
    from matting_lib.inference.predictor import Predictor
# The inference stack (torch, ONNX Runtime) is imported where a replica loads a model, not with
# this module: Serve's application builder imports it on every deploy to bind the deployments, in
# a task process of its own, and torch alone is about 3 s of CPU there.

logger = logging.getLogger("ray.serve")

UNHEALTHY_AFTER_FAILURES = 3
"""Consecutive failed batches after which check_health asks Serve to replace the replica."""


def to_uint8(alpha: np.ndarray) -> np.ndarray:
    """float alpha in [0, 1] -> uint8, rounded to nearest (what an 8-bit matte file holds)."""
    return np.rint(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)


@serve.deployment(name="model", ray_actor_options={"num_cpus": 0.25})
class MattingModel:
    """Serves one checkpoint. Methods: ``predict`` (batched), ``info``, ``check_health``, ``reconfigure``."""

    def __init__(self, name: str, checkpoint: str, settings: ModelDeploymentSettings, backend: str = ""):
        self.name = name
        self.settings = settings
        self.backend = backend or settings.backend
        self.default_checkpoint = checkpoint
        self.predictor = self._load(checkpoint)
        self.checkpoint = checkpoint
        self.loaded_at = time.time()
        self.swaps = 0
        self.swap_error = ""
        self.images = 0
        self.batches = 0
        self.consecutive_failures = 0
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def _load(self, uri: str) -> Predictor:
        from matting_lib.inference.load import backend_name, load_predictor
        from matting_lib.inference.onnx_runtime import ShrinkingSession

        s = self.settings
        t0 = time.perf_counter()
        predictor = load_predictor(
            uri, backend=self.backend, device=s.device, max_side=s.max_side, batch_size=s.max_batch_size,
            num_threads=s.num_threads or None, refine=s.refine, subject_prior=s.subject_prior,
        )
        logger.info("model %s: loaded %s on %s in %.2f s", self.name, uri, backend_name(predictor), time.perf_counter() - t0)
        if backend_name(predictor) == "onnx":
            predictor.model = ShrinkingSession(predictor.model, s.max_side * s.max_side)
        return predictor

    def _side(self, max_side: MaxSide) -> int:
        """A request's working long side: :data:`~matting_lib.resize.KEEP` = the configured
        ``max_side``; an int in [MIN_SIDE, MAX_SIDE] as it is. None (no cap) is refused: MAX_SIDE
        bounds a replica's memory (the ingress never sends it; a direct caller gets the message)."""
        if max_side is KEEP:
            return self.settings.max_side
        if isinstance(max_side, bool) or not isinstance(max_side, int) or not MIN_SIDE <= max_side <= MAX_SIDE:
            raise ValueError(f"max_side: must be an int in [{MIN_SIDE}, {MAX_SIDE}] or KEEP (the configured "
                             f"{self.settings.max_side}); this service has no uncapped size, got {max_side!r}")
        return max_side

    async def reconfigure(self, user_config: Mapping[str, Any] | None) -> None:
        """Hot swap to ``user_config['checkpoint']`` if it differs from the one served.

        A checkpoint that cannot be loaded (or a malformed ``user_config``) does not take the
        model down: the replica keeps serving what it has, logs the error, and reports it as
        ``swap_error`` in :meth:`info` (and so in ``GET /v1/models``) until a swap succeeds.
        """
        uri = ""
        try:
            uri = parse_user_config(user_config, self.default_checkpoint)
            if uri == self.checkpoint:
                self.swap_error = ""
                return
            predictor = await asyncio.to_thread(self._load, uri)
        except Exception as e:  # noqa: BLE001 - reported, the old model keeps serving
            error = f"{type(e).__name__}: {e}"
            logger.error("model %s: hot swap failed, still serving %s: %s", self.name, self.checkpoint, error)
            # Shown to clients (GET /v1/models): the checkpoint by its label, not the server's path (the log has it).
            self.swap_error = error.replace(uri, checkpoint_label(uri)) if uri else error
            return
        self.predictor, self.checkpoint, self.loaded_at = predictor, uri, time.time()
        self.swaps += 1
        self.swap_error = ""

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def predict(self, requests: list[tuple]) -> list[dict[str, Any]]:
        """Alphas for ``(rgb, max_side, refine[, hints])`` requests; ``max_side`` an int in
        [MIN_SIDE, MAX_SIDE] or :data:`~matting_lib.resize.KEEP` = the configured one (:meth:`_side`),
        ``refine`` a mode of :mod:`matting_lib.refine` or ``auto``, ``hints`` a user's box and strokes
        (:class:`matting_lib.refine.hints.Hints`; such requests run one by one,
        :meth:`matting_lib.inference.predictor.Predictor.matte_hinted`).

        Returns, per request, ``{"alpha": uint8 (H, W), 255 = opaque, "model", "checkpoint",
        "forward_ms", "refine", "prior"}``: ``forward_ms`` is the time of the forward pass and
        refinement that computed it (the whole group it ran in); ``refine`` the mode that ran,
        ``prior`` whether the subject prior stood in for an empty alpha.

        A request whose ``refine`` or ``max_side`` this model cannot run (unknown, or ``learned``
        without a refiner; a side out of range) gets ``{"error": message}`` instead, which the ingress answers with a 422; the
        rest of its batch is served.
        """
        predictor, checkpoint = self.predictor, self.checkpoint  # one model for the whole batch
        requests = [(r[0], r[1], r[2] if len(r) > 2 else "auto", r[3] if len(r) > 3 else None) for r in requests]
        modes: dict[str, str] = {}
        errors: list[str] = [""] * len(requests)
        for mode in {r[2] for r in requests}:
            try:
                modes[mode] = resolve_mode(mode, predictor.has_refiner)
            except ValueError as e:
                for i, r in enumerate(requests):
                    errors[i] = f"refine: {e}" if r[2] == mode else errors[i]
        sides: list[int] = [0] * len(requests)
        for i, r in enumerate(requests):
            try:
                sides[i] = self._side(r[1])
            except ValueError as e:
                errors[i] = errors[i] or str(e)
        groups: dict[tuple[int, str], list[int]] = {}
        hinted: list[int] = []
        for i, (_, _, mode, hints) in enumerate(requests):
            if errors[i]:
                continue
            if hints is not None:
                hinted.append(i)
            else:
                groups.setdefault((sides[i], modes[mode]), []).append(i)
        alphas: list[np.ndarray | None] = [None] * len(requests)
        forward_ms = [0.0] * len(requests)
        priors = [False] * len(requests)
        try:
            for (side, mode), idx in groups.items():
                t0 = time.perf_counter()
                out = await asyncio.to_thread(predictor.matte_batch, [requests[i][0] for i in idx], side, mode)
                ms = (time.perf_counter() - t0) * 1000
                for i, (a, info) in zip(idx, out):
                    alphas[i], forward_ms[i], priors[i] = to_uint8(a), ms, info.prior
            for i in hinted:
                rgb, _, mode, hints = requests[i]
                t0 = time.perf_counter()
                try:
                    a, info = await asyncio.to_thread(predictor.matte_hinted, rgb, hints, sides[i], modes[mode])
                except HintError as e:  # the ingress checked them; a direct caller may not have
                    errors[i] = f"hints: {e}"
                    continue
                alphas[i], forward_ms[i], priors[i] = to_uint8(a), (time.perf_counter() - t0) * 1000, info.prior
        except Exception:
            self.consecutive_failures += 1
            raise
        finally:
            big = any(side > self.settings.max_side for side, _ in groups) or any(
                r[0].shape[0] * r[0].shape[1] >= TRIM_AFTER_PIXELS for r in requests)
            if big:  # the working copies and float mattes are freed: hand the memory back
                await asyncio.to_thread(release_memory)
        self.consecutive_failures = 0
        self.images += len(requests)
        self.batches += 1
        return [{"error": e} if e else
                {"alpha": a, "model": self.name, "checkpoint": checkpoint, "forward_ms": f, "refine": modes[r[2]], "prior": p}
                for a, f, r, p, e in zip(alphas, forward_ms, requests, priors, errors)]

    def info(self) -> dict[str, Any]:
        """What this replica serves: name, checkpoint, the checkpoint's metrics, counters."""
        from matting_lib.inference.load import backend_name

        meta = self.predictor.metadata
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "metrics": meta.get("metrics", {}),
            "model_config": to_dict(meta["model_config"]) if meta.get("model_config") else None,
            "device": str(self.predictor.device),
            "backend": backend_name(self.predictor),
            "max_side": self.predictor.max_side,
            "refine": self.predictor.refine,
            "refine_modes": ["auto", *(m for m in REFINE_MODES if m != "learned" or self.predictor.has_refiner)],
            "loaded_at": self.loaded_at,
            "swaps": self.swaps,
            "swap_error": self.swap_error,
            "images": self.images,
            "batches": self.batches,
        }

    def check_health(self) -> None:
        """Raise (Serve then restarts the replica) when the model keeps failing."""
        if self.consecutive_failures >= UNHEALTHY_AFTER_FAILURES:
            raise RuntimeError(f"model {self.name}: {self.consecutive_failures} batches in a row failed")
