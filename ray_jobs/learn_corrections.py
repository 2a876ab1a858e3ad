"""Learn from users' corrections: fine-tune the serving model on them, score it, publish it only if better.

    python -m ray_jobs.learn_corrections --config configs/corrections.yaml
    ray job submit --working-dir . -- python -m ray_jobs.learn_corrections --config configs/corrections.yaml \\
        corrections.store=s3://bucket/corrections current=s3://bucket/models/base.pt \\
        publish.dir=s3://bucket/models/published publish.serve_address=http://HEAD:8265

The corrections are what users saved from the web UI or ``POST /v1/corrections``
(:mod:`matting_lib.data.corrections`), one seed-format folder per tenant (API key). Only the
tenants listed in ``corrections.tenants`` are read, so one tenant's corrections never train
another's model unless its config says so. Steps, each printed with its numbers and written to
``<out>/<run>/results.json`` and ``results.md``:

1. **corrections**: every listed tenant's corrections; a seeded share (``corrections.holdout``,
   at least one) is held out to judge the candidate and never trained on.
2. **data**: the held-in corrections, each repeated ``corrections.repeat`` times, plus
   ``base_rows`` rows of the base training data (``base_data``) so the model does not forget
   what it knew; one manifest in the run's folder.
3. **train**: ``ray_jobs.train``'s TorchTrainer (DDP, Ray Data streaming) with the ``train``
   config, starting from the ``current`` checkpoint and keeping its architecture.
4. **score**: candidate and current model at full size, with the current model's refiner and
   the same settings (working side ``max_side``), on the held-out corrections and, when
   ``real_photos`` is set, on real photos; "all background" beside them.
5. **decide**: publish when the candidate's MAD on the held-out corrections is below the
   current's by more than ``publish.margin`` (a fraction) and, on real photos, not above it by
   more than ``publish.real_tolerance``.
6. **publish**: ``<publish.dir>/<model>-<UTC time>.pt`` (the candidate with the current model's
   refiner attached); with ``publish.serve_address`` (the Ray dashboard), the running Serve
   application is redeployed with that checkpoint as ``model_<name>``'s ``user_config`` (what
   ``serve deploy`` does): the replicas hot swap in place and no request fails. The job waits
   until the model answers with it.

Exit codes: 0 (published or rightly not), 2 (bad config or data: one clear line), 1 (failure).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matting_lib import io
from matting_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from matting_lib.config import ConfigError, TrainConfig, from_dict, load_yaml, apply_overrides, to_dict
from matting_lib.data.corrections import CorrectionError, CorrectionStore
from matting_lib.data.dataset import DatasetError, load_sample
from matting_lib.data.manifest import build_manifest, ensure_manifest, hold_out, read_manifest
from matting_lib.evaluation.scoring import score
from matting_lib.inference.load import load_predictor
from matting_lib.inference.predictor import Predictor
from ray_jobs.common import fail, job_parser, load_job_config
from ray_jobs.train import run_training


@dataclass(frozen=True)
class CorrectionSource:
    """Which corrections train the candidate."""

    store: str = ".serve_data/corrections"
    """The service's ``corrections.store_uri`` (a local folder or s3://bucket/prefix)."""
    tenants: tuple[str, ...] = ("public",)
    """Tenants whose corrections are read (``public``: a service without an API key; ``key-<hash>``
    for a key, as ``GET /v1/corrections`` shows)."""
    holdout: float = 0.25
    """Share of the corrections held out to judge the candidate (at least one)."""
    repeat: int = 8
    """Times each held-in correction appears per epoch."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tenants:
            raise ConfigError("corrections.tenants: list at least one tenant")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"corrections.holdout: must be in (0, 1), got {self.holdout}")
        if self.repeat < 1:
            raise ConfigError(f"corrections.repeat: must be >= 1, got {self.repeat}")


@dataclass(frozen=True)
class PublishSettings:
    """Where an accepted candidate goes, and the service that should swap to it."""

    dir: str = "models/published"
    margin: float = 0.0
    """The candidate's held-out MAD must be below ``current * (1 - margin)``."""
    real_tolerance: float = 0.02
    """On real photos, the candidate's MAD may exceed the current's by at most this fraction."""
    serve_address: str = ""
    """The Ray dashboard of the running service (``http://127.0.0.1:8265``); empty = publish the file only."""
    app: str = "matting"
    model: str = "base"
    """The served model the candidate replaces (its deployment is ``model_<name>``)."""
    wait_s: float = 180.0
    """How long to wait for the model to answer with the new checkpoint."""


@dataclass(frozen=True)
class LearnJobConfig:
    """configs/corrections.yaml mirrors it."""

    corrections: CorrectionSource = field(default_factory=CorrectionSource)
    current: str = "models/base.pt"
    """The checkpoint serving now: the candidate starts from it and is judged against it."""
    base_data: str = ""
    """Seed-format training data mixed in so the model does not forget ("" = none)."""
    base_rows: int = 200
    real_photos: str = ""
    """Seed-format real photos with ground truth, scored beside the held-out corrections ("" = none)."""
    real_split: str = "train"
    train: str = "configs/base.yaml"
    """The training config (its ``model`` section is replaced by the current checkpoint's)."""
    train_overrides: tuple[str, ...] = ()
    """``key=value`` overrides of the training config, e.g. ``stages.0.epochs=2``."""
    max_side: int = 320
    """Working side of both predictors when scoring."""
    subject_prior: bool = True
    """Score with the ImageNet subject prior standing in for empty mattes, as the service does."""
    out: str = "runs/learn_corrections"
    run_name: str = ""
    """The run's folder under ``out`` (default ``learn-<UTC time>``)."""
    publish: PublishSettings = field(default_factory=PublishSettings)

    def __post_init__(self) -> None:
        if not self.current:
            raise ConfigError("current: the checkpoint serving now is required")
        if self.base_rows < 0:
            raise ConfigError(f"base_rows: must be >= 0, got {self.base_rows}")


def log(step: str, message: str) -> None:
    print(f"[{step}] {message}", flush=True)


def split_corrections(ids: list[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(held in, held out): ``holdout`` of ``ids`` (at least one, and at least one left), chosen by
    ``seed`` and the ids alone (:func:`matting_lib.data.manifest.hold_out`, the training jobs' rule)."""
    if len(ids) < 2:
        raise CorrectionError(f"{len(ids)} correction(s): at least 2 are needed (one to learn from, one to judge by)")
    held_in, held_out = hold_out([{"name": i} for i in sorted(ids)], fraction=holdout, seed=seed)
    return [r["name"] for r in held_in], [r["name"] for r in held_out]


def mean_scores(pred: Predictor | None, samples: list[tuple[str, Any]]) -> dict[str, float]:
    """Mean whole-image metrics of ``pred`` (None = "all background") over (name, Sample) pairs, full size."""
    rows = []
    for _, s in samples:
        gt = s.alpha.astype(np.float32) / 255.0
        alpha = np.zeros_like(gt) if pred is None else pred.predict(s.image)
        rows.append(score(alpha, gt, s.trimap))
    keys = ("mad", "sad", "mse", "grad")
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys} | {"n": len(rows)}


def decide(current: dict[str, dict], candidate: dict[str, dict], margin: float, real_tolerance: float) -> tuple[bool, str]:
    """Whether to publish, and why (scores per set: ``corrections`` and optionally ``real``)."""
    c, n = current["corrections"]["mad"], candidate["corrections"]["mad"]
    if not n < c * (1 - margin):
        return False, f"held-out corrections: candidate MAD {n:.4f} is not below the current's {c:.4f} (margin {margin:.0%})"
    if "real" in current:
        rc, rn = current["real"]["mad"], candidate["real"]["mad"]
        if rn > rc * (1 + real_tolerance):
            return False, f"real photos: candidate MAD {rn:.4f} is above the current's {rc:.4f} by more than {real_tolerance:.0%}"
        return True, f"held-out corrections MAD {c:.4f} -> {n:.4f}; real photos {rc:.4f} -> {rn:.4f}"
    return True, f"held-out corrections MAD {c:.4f} -> {n:.4f}"


def swap_serving_model(cfg: PublishSettings, checkpoint: str) -> dict[str, Any]:
    """Redeploy the running application with ``checkpoint`` for ``cfg.model`` (the ``user_config`` hot
    swap of :mod:`serve_app.model`), through the dashboard's REST API as ``serve deploy`` does, and
    wait until the model answers with it. Returns what was done."""
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(cfg.serve_address)
    details = client.get_serve_details()
    apps = details.get("applications") or {}
    if cfg.app not in apps or not apps[cfg.app].get("deployed_app_config"):
        raise RuntimeError(f"no application {cfg.app!r} deployed from a config at {cfg.serve_address} "
                           f"(running: {', '.join(apps) or 'none'})")
    configs = [dict(a["deployed_app_config"]) for a in apps.values() if a.get("deployed_app_config")]
    app = next(c for c in configs if c["name"] == cfg.app)
    placement = ((app.get("args") or {}).get("model_deployment") or {}).get("placement", "separate")
    deployments = [dict(d) for d in app.get("deployments") or []]
    if placement == "ingress":
        target = "ingress"
        entry = next((d for d in deployments if d["name"] == target), None) or {"name": target}
        checkpoints = dict((entry.get("user_config") or {}).get("checkpoints") or {})
        entry["user_config"] = {"checkpoints": {**checkpoints, cfg.model: checkpoint}}
    else:
        target = f"model_{cfg.model}"
        entry = next((d for d in deployments if d["name"] == target), None) or {"name": target}
        entry["user_config"] = {"checkpoint": checkpoint}
    app["deployments"] = [d for d in deployments if d["name"] != target] + [entry]
    config = {"applications": configs}
    for key in ("proxy_location", "http_options", "grpc_options"):
        if details.get(key):
            config[key] = details[key]
    client.deploy_applications(config)
    if placement == "ingress":
        return {"deployment": target, "waited_s": 0.0, "note": "models in the ingress: check GET /v1/models"}
    t0, last = time.monotonic(), ""
    while time.monotonic() - t0 < cfg.wait_s:
        try:
            last = serve.get_deployment_handle(target, cfg.app).info.remote().result(timeout_s=10)["checkpoint"]
            if last == checkpoint:
                return {"deployment": target, "waited_s": round(time.monotonic() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - replicas may be updating
            last = f"{type(e).__name__}: {e}"
        time.sleep(1.0)
    raise RuntimeError(f"{target} still serves {last!r} after {cfg.wait_s:g} s")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Learning from corrections: {results['run']}", "", f"- command: `{results['command']}`"]
    c = results["corrections"]
    lines += [f"- corrections: {c['total']} from tenants {', '.join(c['tenants'])}; {len(c['held_in'])} learned from, "
              f"{len(c['held_out'])} held out", f"- data: {results['data']['train_rows']} training rows "
              f"({results['data']['correction_rows']} from corrections, {results['data']['base_rows']} base), "
              f"{results['data']['val_rows']} validation rows"]
    t = results.get("train", {})
    if t:
        lines.append(f"- train: {t['seconds']:.0f} s, val SAD {t['val_sad']:.4f}, {t['checkpoint']}")
    lines += ["", "| set | model | n | MAD | SAD | MSE | Grad |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, sets in results.get("scores", {}).items():
        for which, m in sets.items():
            lines.append(f"| {which} | {name} | {m['n']} | {m['mad']:.4f} | {m['sad']:.2f} | {m['mse']:.4f} | {m['grad']:.2f} |")
    d = results.get("decision", {})
    lines += ["", f"**Decision: {'publish' if d.get('publish') else 'keep the current model'}**: {d.get('reason', '')}"]
    p = results.get("publish")
    if p:
        lines.append(f"- published: {p['checkpoint']}" + (f"; {p['swap']}" if p.get("swap") else ""))
    return "\n".join(lines) + "\n"


def load_learn_config(path: str, overrides: list[str]) -> LearnJobConfig:
    return load_job_config(path, overrides, cls=LearnJobConfig)


def training_config(cfg: LearnJobConfig, model: dict | None = None, **data: str) -> TrainConfig:
    """The candidate's training config: ``cfg.train`` with ``cfg.train_overrides``, the current model's
    architecture (``model``: its config as a dict; None keeps the file's) and the run's ``data.*``.

    Raises:
        ConfigError: the file or an override does not load (the message names the key).
    """
    raw = apply_overrides(load_yaml(cfg.train), list(cfg.train_overrides))
    if model is not None:
        raw["model"] = model  # the architecture of the model it replaces
    raw["init_checkpoint"] = cfg.current
    raw.setdefault("data", {}).update(data)
    return from_dict(TrainConfig, raw)


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = load_learn_config(args.config, args.overrides)
    run = cfg.run_name or time.strftime("learn-%Y%m%d-%H%M%S", time.gmtime())
    out = io.join(cfg.out, run)
    results: dict[str, Any] = {"run": run, "command": "python -m ray_jobs.learn_corrections " + " ".join(argv or sys.argv[1:]),
                               "config": to_dict(cfg)}

    def save() -> None:
        io.write_text(io.join(out, "results.json"), json.dumps(results, indent=1) + "\n")
        io.write_text(io.join(out, "results.md"), markdown(results))

    # 1. corrections
    store = CorrectionStore(cfg.corrections.store)
    try:
        current = load_checkpoint(cfg.current)
        ids = {t: [c.id for c in store.list(t)] for t in cfg.corrections.tenants}
        everything = [(t, i) for t, names in ids.items() for i in names]
        held_in, held_out = split_corrections([f"{t}/{i}" for t, i in everything], cfg.corrections.holdout, cfg.corrections.seed)
    except (CheckpointError, CorrectionError, OSError) as e:
        fail(f"{e}", code=2)
    results["corrections"] = {"store": cfg.corrections.store, "tenants": list(cfg.corrections.tenants),
                              "per_tenant": {t: len(v) for t, v in ids.items()}, "total": len(everything),
                              "held_in": held_in, "held_out": held_out}
    log("corrections", f"{len(everything)} from {', '.join(f'{t} ({len(v)})' for t, v in ids.items())}: "
                       f"{len(held_in)} to learn from, {len(held_out)} held out")

    # 2. data
    rows: dict[str, dict] = {}
    for t in cfg.corrections.tenants:
        if ids[t]:
            built = build_manifest(store.folder(t), splits=("train",), out_uri=io.join(out, f"corrections-{t}.jsonl"), progress=False)
            rows.update({f"{t}/{r['name']}": r for r in built})
    train_rows = [{**rows[k], "split": "train"} for k in held_in for _ in range(cfg.corrections.repeat)]
    val_rows = [{**rows[k], "split": "val"} for k in held_in]
    base: list[dict] = []
    if cfg.base_data and cfg.base_rows:
        base_all = read_manifest(ensure_manifest(cfg.base_data, out_dir=out, progress=False))
        pool = [r for r in base_all if r["split"] == "train"]
        pick = np.random.default_rng(cfg.corrections.seed).permutation(len(pool))[: cfg.base_rows]
        base = [pool[i] for i in sorted(pick)]
        val_rows = [r for r in base_all if r["split"] == "val"] or val_rows
    manifest_uri = io.join(out, "manifest.jsonl")
    io.write_text(manifest_uri, "".join(json.dumps(r) + "\n" for r in train_rows + base + val_rows))
    results["data"] = {"manifest": manifest_uri, "train_rows": len(train_rows) + len(base), "correction_rows": len(train_rows),
                       "base_rows": len(base), "val_rows": len(val_rows)}
    log("data", f"{len(train_rows) + len(base)} training rows ({len(train_rows)} from corrections x{cfg.corrections.repeat}, "
                f"{len(base)} base), {len(val_rows)} validation rows: {manifest_uri}")
    save()

    # 3. train
    try:
        train_cfg = training_config(cfg, to_dict(current.model_config), uri=store.folder(cfg.corrections.tenants[0]),
                                    manifest=manifest_uri)
        train_cfg = dataclasses.replace(train_cfg, run=dataclasses.replace(train_cfg.run, name=run, storage_path=cfg.out))
    except (ConfigError, OSError) as e:
        fail(f"train config {cfg.train}: {e}", code=2)
    log("train", f"{train_cfg.total_epochs} epoch(s) from {cfg.current} with {cfg.train}")
    candidate_uri, metrics, seconds = run_training(train_cfg, args.address)
    results["train"] = {"checkpoint": candidate_uri, "seconds": seconds, "val_sad": float(metrics.get("val_sad", float("nan")))}
    save()

    # 4. score
    sets: dict[str, list] = {}
    try:
        sets["corrections"] = [(k, load_sample(store.folder(k.split("/")[0]), k.split("/")[1])) for k in held_out]
        if cfg.real_photos:
            from matting_lib.data.dataset import read_split

            sets["real"] = [(n, load_sample(cfg.real_photos, n)) for n in read_split(cfg.real_photos, cfg.real_split)]
    except (DatasetError, OSError) as e:
        fail(f"scoring data: {e}", code=2)
    # Both as the service runs them (load_predictor's backend choice), the candidate with the current's refiner.
    preds = {
        "current": load_predictor(cfg.current, max_side=cfg.max_side, subject_prior=cfg.subject_prior),
        "candidate": load_predictor(candidate_uri, refiner_uri=cfg.current if current.refiner else "",
                                    max_side=cfg.max_side, subject_prior=cfg.subject_prior),
        "background": None,
    }
    scores = {name: {s: mean_scores(p, samples) for s, samples in sets.items()} for name, p in preds.items()}
    results["scores"] = scores
    for s in sets:
        log("score", f"{s} ({len(sets[s])}): MAD current {scores['current'][s]['mad']:.4f}, candidate "
                     f"{scores['candidate'][s]['mad']:.4f}, all background {scores['background'][s]['mad']:.4f}")

    # 5. decide
    ok, reason = decide(scores["current"], scores["candidate"], cfg.publish.margin, cfg.publish.real_tolerance)
    results["decision"] = {"publish": ok, "reason": reason}
    log("decide", f"{'publish' if ok else 'keep the current model'}: {reason}")
    save()
    if not ok:
        return 0

    # 6. publish
    cand = load_checkpoint(candidate_uri)
    published = io.join(cfg.publish.dir, f"{cfg.publish.model}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.pt")
    save_checkpoint(published, cand.build_model(), train_config=cand.train_config,
                    metrics={**cand.metrics, **{f"corrections_{k}": v for k, v in scores["candidate"]["corrections"].items()}},
                    data_fingerprint=cand.data_fingerprint, refiner=current.refiner)
    results["publish"] = {"checkpoint": published}
    log("publish", f"wrote {published}")
    save()
    if cfg.publish.serve_address:
        try:
            swap = swap_serving_model(cfg.publish, published)
        except Exception as e:  # noqa: BLE001 - the file is published; say what the swap hit
            results["publish"]["swap"] = f"failed: {type(e).__name__}: {e}"
            save()
            fail(f"published {published}, but swapping the service failed: {type(e).__name__}: {e}")
        results["publish"]["swap"] = f"{swap['deployment']} serves it (after {swap['waited_s']} s)"
        log("publish", results["publish"]["swap"])
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
