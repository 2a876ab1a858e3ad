"""Offline validation of everything in ``infra/``: what `kubectl apply`, `ray up` and
`serve deploy` would reject, found before a cluster exists.

    python -m infra.validate [--crd-dir DIR]     # exit 1 when anything is wrong

Checks, each returning a list of messages that name the file, resource and field:

- KubeRay resources (``infra/kuberay/*.yaml``, ``ray.io/v1``) against the OpenAPI v3 schemas of
  the KubeRay CRDs (default folder ``../shared/schemas/kuberay`` next to the repository). The
  schemas become JSON Schema: ``x-kubernetes-*`` keys are dropped, ``nullable`` admits null,
  ``int-or-string`` stays the ``anyOf`` the CRD already spells out, and every object that
  lists its properties is closed (``additionalProperties: false``), as the API server's strict
  field validation rejects unknown fields instead of silently pruning a typo.
  CEL rules (``x-kubernetes-validations``) are not evaluated.
- Ray Serve configs (``serveConfigV2`` of a RayService, ``serve_app/config.yaml``) with Ray's own
  ``ServeDeploySchema``, and every ``import_path`` resolves to a module of this repository.
- The AWS cluster-launcher config against ``ray-schema.json`` shipped inside the ray package,
  then Ray's own cross-field checks (``prepare_config`` + ``validate_config``).
- Job entrypoints (``python -m ray_jobs.<job> --config FILE [key=value ...]``): the module
  exists, the config file exists relative to the repository root and loads with the job's
  loader, overrides included.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.resources
import json
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CRD_DIR = REPO.parent / "shared" / "schemas" / "kuberay"
"""Where CI keeps the KubeRay CRDs: ``../shared/schemas/kuberay`` relative to the repo root."""
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
KUBERAY_API = "ray.io/v1"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CrdsMissing(FileNotFoundError):
    """The folder with the KubeRay CRDs is absent (machines other than CI may lack it)."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (empty documents skipped)."""
    return [d for d in yaml.load_all(Path(path).read_text(), Loader=_Loader) if d is not None]


# --------------------------------------------------------------------------- KubeRay CRDs


def openapi_to_jsonschema(node: Any) -> Any:
    """A Kubernetes structural (OpenAPI v3) schema as an equivalent, strict JSON Schema."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":  # field names -> schemas: convert the schemas only
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        else:
            out[key] = openapi_to_jsonschema(value)
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    open_ended = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not open_ended:
        out["additionalProperties"] = False
    return out


def crd_dir_or_raise(crd_dir: Path | None = None) -> Path:
    """The CRD folder; raises :class:`CrdsMissing` naming it when it is absent."""
    folder = Path(crd_dir) if crd_dir else DEFAULT_CRD_DIR
    missing = [f for f in CRD_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise CrdsMissing(f"KubeRay CRDs not found: {folder} lacks {', '.join(missing)} (CI has ../shared/schemas/kuberay)")
    return folder


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, crd_dir: Path) -> dict[str, Any]:
    """JSON Schema of ``kind`` (version v1) from its CRD file in ``crd_dir``."""
    crd = load_documents(crd_dir / CRD_FILES[kind])[0]
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if "v1" not in versions:
        raise ValueError(f"{CRD_FILES[kind]}: no v1 version (has {', '.join(versions)})")
    schema = openapi_to_jsonschema(versions["v1"]["schema"]["openAPIV3Schema"])
    return schema | {"$schema": "http://json-schema.org/draft-07/schema#"}


def _where(path: Iterable[Any]) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else f".{p}"
    return text.lstrip(".") or "<root>"


def kuberay_errors(doc: dict[str, Any], crd_dir: Path) -> list[str]:
    """Problems of one KubeRay resource against its CRD (empty when valid)."""
    import jsonschema

    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name", "<unnamed>")
    if doc.get("apiVersion") != KUBERAY_API:
        return [f"{kind}/{name}: apiVersion must be {KUBERAY_API}, got {doc.get('apiVersion')!r}"]
    if kind not in CRD_FILES:
        return [f"{kind}/{name}: unknown KubeRay kind (known: {', '.join(CRD_FILES)})"]
    validator = jsonschema.Draft7Validator(crd_schema(kind, crd_dir))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{kind}/{name}: {_where(e.absolute_path)}: {e.message}" for e in errors]


# --------------------------------------------------------------------------- Ray Serve


def serve_config_errors(config: Any, source: str) -> list[str]:
    """Problems of a Serve deploy config (the ``serve deploy`` file format)."""
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(config, dict):
        return [f"{source}: a Serve config must be a mapping, got {type(config).__name__}"]
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError lists every field
        return [f"{source}: not a valid Serve config: {e}"]
    errors = []
    for app in config.get("applications", []):
        where = f"{source}: application {app.get('name')!r}"
        module = str(app.get("import_path", "")).partition(":")[0]
        if not module_exists(module):
            errors.append(f"{where}: import_path module {module!r} not found in the repository")
        elif app.get("import_path") == "serve_app.app:build_app":
            errors += matting_app_errors(app, where)
    return errors


def matting_app_errors(app: dict[str, Any], where: str) -> list[str]:
    """The matting app's ``args`` load as its ServeConfig, and every ``deployments`` entry names
    one of its deployments (``ingress``, ``model_<model>``) with a valid ``user_config``."""
    from matting_lib.config import ConfigError
    from serve_app.app import deployment_name
    from serve_app.config import serve_config_from_args
    from serve_app.replica import parse_ingress_user_config, parse_user_config

    try:
        cfg = serve_config_from_args(app.get("args") or {})
    except ConfigError as e:
        return [f"{where}: args: {e}"]
    placement = cfg.model_deployment.placement
    models = {deployment_name(name) for name in cfg.model_names} if placement == "separate" else set()
    errors = []
    for dep in app.get("deployments") or []:
        name = dep.get("name")
        if name not in models | {"ingress"}:
            errors.append(f"{where}: deployment {name!r} is not one of the app's ({', '.join(sorted(models | {'ingress'}))})")
        elif "user_config" in dep:
            try:
                if name == "ingress":
                    parse_ingress_user_config(dep["user_config"], cfg.model_names, placement)
                else:
                    parse_user_config(dep["user_config"], default_checkpoint="")
            except ValueError as e:
                errors.append(f"{where}: deployment {name!r}: {e}")
    return errors


# --------------------------------------------------------------------------- AWS cluster launcher


def cluster_launcher_schema() -> dict[str, Any]:
    """The cluster-launcher JSON Schema that ships with the installed ray package."""
    return json.loads(importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())


def cluster_launcher_errors(config: Any, source: str) -> list[str]:
    """Problems of a ``ray up`` config: the shipped schema, then Ray's own cross-field checks."""
    import jsonschema

    validator = jsonschema.Draft7Validator(cluster_launcher_schema())
    errors = [f"{source}: {_where(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]
    if errors:
        return errors
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # "setting max workers ..." lines

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (ValueError, KeyError) as e:
        return [f"{source}: {e}"]
    return []


# --------------------------------------------------------------------------- job entrypoints


def module_exists(module: str) -> bool:
    """Whether ``module`` is importable from the repository, found the way Python's path finder
    would find it with the repository first on ``sys.path``, without importing it or its parent
    packages and without touching ``sys.path``."""
    from importlib.machinery import PathFinder

    if not module or not all(part.isidentifier() for part in module.split(".")):
        return False
    search: list[str] | None = [str(REPO)]
    for part in module.split("."):
        spec = PathFinder.find_spec(part, search) if search is not None else None
        if spec is None:
            return False
        search = list(spec.submodule_search_locations or []) or None
    return True


def _load_train(path: str, overrides: list[str]) -> Any:
    from matting_lib.config import TrainConfig, load_config

    return load_config(path, overrides, cls=TrainConfig)


def _load_sweep(path: str, overrides: list[str]) -> Any:
    """The sweep config, its base training config (with ``train:`` overrides) and its search space."""
    import dataclasses

    from matting_lib.config import ConfigError, load_config
    from ray_jobs.tune.search import resolve_algorithm
    from ray_jobs.tune.space import SweepConfig, load_base, max_epochs, parse_space

    sweep = load_config(path, overrides, cls=SweepConfig)
    if "://" not in sweep.base_config and not Path(sweep.base_config).is_absolute():
        sweep = dataclasses.replace(sweep, base_config=str(REPO / sweep.base_config))  # the job runs from the repo root
    base = load_base(sweep)
    epochs = max_epochs(base, parse_space(sweep.space, base, resolve_algorithm(sweep.search.algorithm)))
    if sweep.asha.grace_period > epochs:  # the tune job's own start-up check
        raise ConfigError(f"asha.grace_period: must be <= the longest trial's {epochs} epochs")
    return sweep


def _load_learn(path: str, overrides: list[str]) -> Any:
    """The learn-from-corrections config and the training config it names (with its overrides)."""
    import dataclasses

    from matting_lib.config import load_config
    from ray_jobs.learn_corrections import LearnJobConfig, training_config

    cfg = load_config(path, overrides, cls=LearnJobConfig)
    if "://" not in cfg.train and not Path(cfg.train).is_absolute():
        cfg = dataclasses.replace(cfg, train=str(REPO / cfg.train))  # the job runs from the repo root
    training_config(cfg)
    return cfg


CONFIG_LOADERS: dict[str, Callable[[str, list[str]], Any]] = {
    "ray_jobs.train": _load_train,
    "ray_jobs.tune": _load_sweep,
    "ray_jobs.learn_corrections": _load_learn,
}
"""How each job module loads ``--config FILE key=value ...``; a job missing here is reported."""


def entrypoint_errors(entrypoint: str, source: str) -> list[str]:
    """Problems of ``python -m ray_jobs.<job> --config FILE [key=value ...]``."""
    argv = shlex.split(entrypoint)
    if len(argv) < 3 or Path(argv[0]).name not in ("python", "python3") or argv[1] != "-m":
        return [f"{source}: entrypoint must start with 'python -m <module>', got {entrypoint!r}"]
    module, args = argv[2], argv[3:]
    if not module_exists(module):
        return [f"{source}: entrypoint module {module!r} not found in the repository"]
    from ray_jobs.common import job_parser

    parser = job_parser(module)
    parser.exit_on_error = False
    try:
        parsed, unknown = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit) as e:
        return [f"{source}: {module}: bad arguments {args}: {e}"]
    if unknown:
        return [f"{source}: {module}: unrecognised arguments {unknown}"]
    config = REPO / parsed.config
    if not config.is_file():
        return [f"{source}: {module}: config {parsed.config} not found (relative to the repository root)"]
    loader = CONFIG_LOADERS.get(module)
    if loader is None:
        return [f"{source}: no config loader known for {module} (add it to infra.validate.CONFIG_LOADERS)"]
    try:
        loader(str(config), list(parsed.overrides))
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        return [f"{source}: {module}: {parsed.config} with {parsed.overrides} does not load: {e}"]
    return []


def manifest_entrypoint_errors(doc: dict[str, Any], source: str) -> list[str]:
    """Entrypoint, runtime env and Serve config checks of one KubeRay resource."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    where = f"{source}: {kind}/{(doc.get('metadata') or {}).get('name')}"
    if kind == "RayJob":
        errors = entrypoint_errors(str(spec.get("entrypoint", "")), where)
        if "runtimeEnvYAML" in spec:
            errors += runtime_env_errors(spec["runtimeEnvYAML"], where)
        return errors
    if kind == "RayService":
        try:
            serve_config = yaml.safe_load(str(spec.get("serveConfigV2", "")))
        except yaml.YAMLError as e:
            return [f"{where}: serveConfigV2 is not YAML: {e}"]
        return serve_config_errors(serve_config, f"{where} serveConfigV2")
    return []


def runtime_env_errors(text: str, where: str) -> list[str]:
    """Problems of a ``runtimeEnvYAML`` block, checked by Ray's ``RuntimeEnv``."""
    from ray.runtime_env import RuntimeEnv

    try:
        env = yaml.safe_load(text)
        RuntimeEnv(**(env or {}))
    except Exception as e:  # noqa: BLE001 - YAML and Ray raise several types for bad envs
        return [f"{where}: runtimeEnvYAML: {type(e).__name__}: {e}"]
    return []


# --------------------------------------------------------------------------- Docker image


def ray_pin() -> str:
    """The Ray version pinned in pyproject.toml (``ray[...]==X``)."""
    match = re.search(r'"ray\[[^\]]*\]==([0-9][^"]*)"', (REPO / "pyproject.toml").read_text())
    if not match:
        raise ValueError("pyproject.toml pins no ray[...]==VERSION")
    return match.group(1)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    rx, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
        elif pattern[i] == "*":
            rx, i = rx + "[^/]*", i + 1
        elif pattern[i] == "?":
            rx, i = rx + "[^/]", i + 1
        else:
            rx, i = rx + re.escape(pattern[i]), i + 1
    return re.compile(rx)


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` patterns keep ``path`` (relative to the context) out.

    Docker's rules: the last matching pattern wins, ``!`` re-includes, and a pattern that
    matches a directory covers everything below it.
    """
    parts = path.strip("/").split("/")
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = _ignore_regex((raw[1:] if negate else raw).strip().strip("/")).fullmatch
        if any(rx("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def dockerfile_errors(dockerfile: Path, ignore_file: Path) -> list[str]:
    """The image follows the project: Ray base image of the pinned version, pinned torch
    installed before the project, every copied path present and inside the build context."""
    src = str(dockerfile.relative_to(REPO)) if dockerfile.is_relative_to(REPO) else str(dockerfile)
    steps = dockerfile_instructions(dockerfile.read_text())
    patterns = [p.strip() for p in ignore_file.read_text().splitlines() if p.strip() and not p.lstrip().startswith("#")]
    errors = []
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    base = next((a for kind, a in steps if kind == "FROM"), "")
    for name, value in args.items():
        base = base.replace("${" + name + "}", value).replace("$" + name, value)
    match = re.fullmatch(r"rayproject/ray:([0-9.]+)-py3(\d+)-gpu(?:\s+AS\s+\S+)?", base, flags=re.I)
    pin = ray_pin()
    if not match:
        errors.append(f"{src}: FROM must be the official GPU image rayproject/ray:<version>-py3XX-gpu, got {base!r}")
    elif match.group(1) != pin:
        errors.append(f"{src}: base image Ray {match.group(1)} differs from the pyproject.toml pin {pin}")
    runs = [a for kind, a in steps if kind == "RUN"]
    torch_at = next((i for i, r in enumerate(runs) if re.search(r"pip install\b.*\btorch", r) or "TORCH_SPEC" in r), None)
    project_at = next((i for i, r in enumerate(runs) if re.search(r"pip install\b[^&]*\s\.(\s|$)", r)), None)
    if project_at is None:
        errors.append(f"{src}: no RUN installs the project (pip install .)")
    if torch_at is None or (project_at is not None and torch_at > project_at):
        errors.append(f"{src}: torch must be installed, pinned, before the project")
    elif "TORCH_SPEC" in runs[torch_at] and not re.fullmatch(r'"?torch==[0-9][^"]*"?', args.get("TORCH_SPEC", "")):
        errors.append(f"{src}: TORCH_SPEC must pin torch==VERSION, got {args.get('TORCH_SPEC')!r}")
    for kind, a in steps:
        if kind not in ("COPY", "ADD"):
            continue
        words = [w for w in a.split() if not w.startswith("--")]
        for source in words[:-1]:
            if not (REPO / source).exists():
                errors.append(f"{src}: {kind} source {source} does not exist")
            elif docker_ignored(source, patterns):
                errors.append(f"{src}: {kind} source {source} is excluded by {ignore_file.name}")
    return errors


# --------------------------------------------------------------------------- all of infra/


def validate_all(crd_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) over every definition in infra/ and serve_app/config.yaml."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        crds: Path | None = crd_dir_or_raise(crd_dir)
    except CrdsMissing as e:
        crds = None
        notes.append(f"skipped the CRD schema checks: {e}")
    for path in sorted((REPO / "infra" / "kuberay").glob("*.yaml")):
        rel = str(path.relative_to(REPO))
        for doc in load_documents(path):
            if str(doc.get("apiVersion", "")).startswith("ray.io/"):
                if crds is not None:
                    problems += [f"{rel}: {m}" for m in kuberay_errors(doc, crds)]
                problems += manifest_entrypoint_errors(doc, rel)
    docker = REPO / "infra" / "docker"
    problems += dockerfile_errors(docker / "Dockerfile", docker / "Dockerfile.dockerignore")
    launcher = REPO / "infra" / "aws" / "cluster.yaml"
    problems += cluster_launcher_errors(load_documents(launcher)[0], str(launcher.relative_to(REPO)))
    serve_config = REPO / "serve_app" / "config.yaml"
    if serve_config.is_file():
        problems += serve_config_errors(load_documents(serve_config)[0], "serve_app/config.yaml")
    else:
        notes.append("serve_app/config.yaml not found: its Serve check skipped")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crd-dir", type=Path, default=None, help=f"KubeRay CRD folder (default: {DEFAULT_CRD_DIR})")
    args = p.parse_args(argv)
    problems, notes = validate_all(args.crd_dir)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    for m in problems:
        print(f"error: {m}", file=sys.stderr)
    print(f"{len(problems)} problem(s)" if problems else "infra: all definitions valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
