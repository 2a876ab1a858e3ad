"""infra/: the cluster definitions are validated offline, and the validators can fail.

KubeRay manifests against the CRDs' OpenAPI schemas (``../shared/schemas/kuberay``, skipped
with a message naming that folder where it is absent), Serve configs with Ray's
``ServeDeploySchema``, the AWS launcher config with the schema inside the ray package, the
Dockerfile against the project's pins, and every job entrypoint against the repo's modules
and configs. Each validator is also shown a broken variant and must name what is wrong.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys

import pytest

from infra import validate as v
from testkit import ROOT

KUBERAY = ROOT / "infra" / "kuberay"
DOCKER = ROOT / "infra" / "docker"
LAUNCHER = ROOT / "infra" / "aws" / "cluster.yaml"


@pytest.fixture(scope="module")
def crds():
    try:
        return v.crd_dir_or_raise()
    except v.CrdsMissing as e:
        pytest.skip(str(e))


def resources(kind: str | None = None) -> list[tuple[str, dict]]:
    """(file name, document) of every ray.io resource in infra/kuberay, optionally one kind."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in v.load_documents(path):
            if str(doc.get("apiVersion", "")).startswith("ray.io/") and kind in (None, doc["kind"]):
                out.append((path.name, doc))
    return out


def one(kind: str) -> dict:
    docs = resources(kind)
    assert docs, f"no {kind} in infra/kuberay"
    return copy.deepcopy(docs[0][1])


# --------------------------------------------------------------------------- KubeRay


def test_every_kuberay_resource_matches_its_crd(crds):
    kinds = {doc["kind"] for _, doc in resources()}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds
    for name, doc in resources():
        assert v.kuberay_errors(doc, crds) == [], name


def test_crd_validator_rejects_broken_resources(crds):
    cluster = one("RayCluster")
    cluster["spec"]["enableInTreeAutoscalling"] = True  # typo: the API server would reject it
    cluster["spec"]["autoscalerOptions"]["version"] = "v3"
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    errors = "\n".join(v.kuberay_errors(cluster, crds))
    for needle in (
        "spec: Additional properties are not allowed ('enableInTreeAutoscalling'",
        "spec.autoscalerOptions.version: 'v3' is not one of",
        "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
        "spec.workerGroupSpecs[0].maxReplicas: 'four' is not of type 'integer'",
        "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.memory",
    ):
        assert needle in errors
    job = one("RayJob")
    job["spec"]["entrypoint"] = ["python", "-m", "ray_jobs.train"]
    assert any("spec.entrypoint" in e and "is not of type 'string'" in e for e in v.kuberay_errors(job, crds))
    assert v.kuberay_errors({**one("RayJob"), "apiVersion": "ray.io/v1alpha1"}, crds)[0].endswith(
        "apiVersion must be ray.io/v1, got 'ray.io/v1alpha1'"
    )


def test_openapi_conversion_keeps_int_or_string_and_closes_objects():
    schema = v.openapi_to_jsonschema({
        "type": "object",
        "properties": {
            "cpu": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
            "note": {"type": "string", "nullable": True},
        },
    })
    import jsonschema

    ok = jsonschema.Draft7Validator(schema)
    assert ok.is_valid({"cpu": 2, "free": {"a": "x", "b": 1}, "note": None})
    assert ok.is_valid({"cpu": "500m"})
    assert not ok.is_valid({"cpu": [1]})
    assert not ok.is_valid({"cpus": 2})
    assert "x-kubernetes-int-or-string" not in schema["properties"]["cpu"]


def test_raycluster_shape():
    spec = one("RayCluster")["spec"]
    pin = v.ray_pin()
    assert spec["rayVersion"] == pin
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values() if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    cpu = [g for g in groups.values() if g not in gpu]
    assert gpu and cpu, "need a GPU worker group and a CPU (Ray Data) worker group"
    assert all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in gpu)
    images = {c["image"] for _, d in resources() for c in _containers(d)}
    assert len(images) == 1, f"every Ray pod must run the same image, found {images}"


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or (spec if "headGroupSpec" in spec else None)
    if cluster is None:
        return []
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# --------------------------------------------------------------------------- entrypoints


def test_rayjob_entrypoints_name_modules_and_configs_that_load():
    jobs = resources("RayJob")
    modules = {shlex.split(doc["spec"]["entrypoint"])[2] for _, doc in jobs}
    assert modules == {"ray_jobs.train", "ray_jobs.tune", "ray_jobs.learn_corrections"}
    for name, doc in jobs:
        assert v.manifest_entrypoint_errors(doc, name) == []
        assert doc["spec"]["clusterSelector"]["ray.io/cluster"] == one("RayCluster")["metadata"]["name"]


@pytest.mark.parametrize(
    ("entrypoint", "needle"),
    [
        ("python -m ray_jobs.nope --config configs/tiny.yaml", "module 'ray_jobs.nope' not found"),
        ("python -m ray_jobs.train --config configs/missing.yaml", "config configs/missing.yaml not found"),
        ("python -m ray_jobs.train --config configs/tiny.yaml scaling.num_workers=zero", "scaling.num_workers"),
        ("python -m ray_jobs.train --config configs/tiny.yaml optim.nope=1", "optim.nope: unknown key"),
        ("python -m ray_jobs.train --config configs/tiny.yaml --workers 3", "unrecognised arguments ['--workers']"),
        ("bash -c 'python train.py'", "must start with 'python -m <module>'"),
        ("python -m ray_jobs.tune --config configs/sweep_lowlight.yaml space.dropout=[0.1]", "dropout"),
        ("python -m ray_jobs.tune --config configs/sweep_lowlight.yaml asha.grace_period=99", "asha.grace_period"),
    ],
)
def test_entrypoint_checker_rejects(entrypoint, needle):
    errors = v.entrypoint_errors(entrypoint, "test")
    assert errors and needle in errors[0], errors


def test_runtime_env_checker_rejects_unknown_fields():
    job = one("RayJob")
    assert v.manifest_entrypoint_errors(job, "ok") == []
    job["spec"]["runtimeEnvYAML"] = "env_vars: {A: 1}\n"  # values must be strings
    assert any("runtimeEnvYAML" in e for e in v.manifest_entrypoint_errors(job, "bad"))


# --------------------------------------------------------------------------- AWS launcher


def test_aws_cluster_launcher_config_is_valid_and_shaped():
    config = v.load_documents(LAUNCHER)[0]
    assert v.cluster_launcher_errors(config, "cluster.yaml") == []
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] == 0 and t["node_config"]["InstanceType"].startswith("g") for t in gpu)
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values()), "S3 access via instance profiles"
    setup = config["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if re.search(r'"torch==[0-9.]+"', c))
    project_at = next(i for i, c in enumerate(setup) if "pip install -q ~/universal-matting" in c)
    assert torch_at < project_at
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:])


def test_aws_validator_rejects_broken_configs():
    config = v.load_documents(LAUNCHER)[0]
    typo = copy.deepcopy(config)
    typo["idle_timeout_minute"] = 5
    assert "Additional properties are not allowed ('idle_timeout_minute'" in v.cluster_launcher_errors(typo, "x")[0]
    wrong_type = copy.deepcopy(config)
    wrong_type["available_node_types"]["gpu"]["resources"]["GPU"] = "one"
    assert "available_node_types.gpu.resources.GPU: 'one' is not of type 'integer'" in v.cluster_launcher_errors(wrong_type, "x")[0]
    no_head = copy.deepcopy(config)
    no_head["head_node_type"] = "ghost"
    assert "head_node_type" in v.cluster_launcher_errors(no_head, "x")[0]


# --------------------------------------------------------------------------- Docker image


def test_dockerfile_follows_the_project_pins():
    assert v.dockerfile_errors(DOCKER / "Dockerfile", DOCKER / "Dockerfile.dockerignore") == []


def test_dockerfile_checker_rejects(tmp_path):
    good = (DOCKER / "Dockerfile").read_text()
    ignore = DOCKER / "Dockerfile.dockerignore"
    cases = {
        "differs from the pyproject.toml pin": good.replace(f"ARG RAY_VERSION={v.ray_pin()}", "ARG RAY_VERSION=2.59.0"),
        "FROM must be the official GPU image": good.replace("-py311-gpu", "-py311"),
        "TORCH_SPEC must pin torch==VERSION": good.replace('TORCH_SPEC="torch==2.13.0"', "TORCH_SPEC=torch"),
        "COPY source nowhere does not exist": good + "\nCOPY nowhere ./nowhere\n",
        "COPY source tests is excluded": good + "\nCOPY tests ./tests\n",
        "no RUN installs the project": re.sub(r"pip install --no-cache-dir \. ", "true ", good),
    }
    for needle, text in cases.items():
        path = tmp_path / "Dockerfile"
        path.write_text(text)
        errors = v.dockerfile_errors(path, ignore)
        assert any(needle in e for e in errors), (needle, errors)


def test_dockerignore_semantics():
    patterns = ["*", "!pyproject.toml", "!matting_lib/", "**/__pycache__"]
    assert not v.docker_ignored("pyproject.toml", patterns)
    assert not v.docker_ignored("matting_lib/nets/unet.py", patterns)
    assert v.docker_ignored("matting_lib/nets/__pycache__/unet.pyc", patterns)
    assert v.docker_ignored(".venv/bin/python", patterns)
    assert v.docker_ignored("runs/x/best.pt", patterns)


# --------------------------------------------------------------------------- the guide


def guide_commands() -> list[str]:
    """Shell commands of the fenced bash blocks of infra/README.md, continuation lines joined."""
    text = (ROOT / "infra" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    joined = "\n".join(re.sub(r"\\\n\s*", " ", b) for b in blocks)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_guide_job_submissions_name_modules_and_configs_that_load(monkeypatch):
    submits = [c.split(" -- ", 1)[1].split(" #")[0] for c in guide_commands() if c.startswith("ray job submit")]
    modules = {shlex.split(s)[2] for s in submits}
    assert {"ray_jobs.train", "ray_jobs.tune", "ray_jobs.evaluate"} <= modules
    config_jobs = [s for s in submits if shlex.split(s)[2] in v.CONFIG_LOADERS]
    for entrypoint in config_jobs:
        assert v.entrypoint_errors(entrypoint, "infra/README.md") == []
    # Found in the repository without it on sys.path, and without putting it there.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(ROOT))])
    path_before = list(sys.path)
    assert all(v.module_exists(m) for m in modules)
    assert not any(v.module_exists(m) for m in ("ray_jobs.nope", "ray_jobs.train.main", "nope", "ray_jobs..train", ""))
    assert sys.path == path_before
    # The manifests and the guide submit the same jobs with the same arguments.
    manifests = {doc["spec"]["entrypoint"] for _, doc in resources("RayJob")}
    assert {" ".join(shlex.split(s)) for s in config_jobs} == {" ".join(shlex.split(m)) for m in manifests}


def test_guide_evaluate_command_parses():
    from ray_jobs.evaluate.cli import parse_args, parse_models

    (cmd,) = [c.split(" -- ", 1)[1] for c in guide_commands() if "ray_jobs.evaluate" in c]
    args = parse_args(shlex.split(cmd)[3:])
    assert args.split == "val" and args.ray and args.out.startswith("s3://")
    assert [name for name, _ in parse_models(args.checkpoint)] == ["current", "candidate"]


# --------------------------------------------------------------------------- Serve / RayService

SERVE_CONFIG = ROOT / "serve_app" / "config.yaml"


def service_serve_config() -> dict:
    import yaml

    return yaml.safe_load(one("RayService")["spec"]["serveConfigV2"])


def test_serve_configs_pass_rays_schema_and_the_apps_loader():
    assert v.serve_config_errors(v.load_documents(SERVE_CONFIG)[0], "serve_app/config.yaml") == []
    assert v.serve_config_errors(service_serve_config(), "serveConfigV2") == []


def test_rayservice_is_generated_from_the_serve_config():
    from infra import gen_rayservice

    assert (KUBERAY / "rayservice.yaml").read_text() == gen_rayservice.render(), "stale: run python -m infra.gen_rayservice"
    source, service = v.load_documents(SERVE_CONFIG)[0], service_serve_config()

    def shape(cfg: dict) -> list:
        return [
            (a["name"], a["import_path"], a.get("route_prefix"), [m["name"] for m in a["args"]["models"]], sorted(a["args"]))
            for a in cfg["applications"]
        ]

    assert shape(service) == shape(source)
    # What the overlay sets is what the service gets; everything else is the app's own value.
    app, src = service["applications"][0], source["applications"][0]
    assert all(m["checkpoint"].startswith("s3://") for m in app["args"]["models"])
    assert app["args"]["routing"] == src["args"]["routing"] and app["args"]["limits"] == src["args"]["limits"]
    assert service["http_options"]["host"] == "0.0.0.0"
    checkpoints = {f"model_{m['name']}": m["checkpoint"] for m in app["args"]["models"]}
    assert {d["name"]: d["user_config"]["checkpoint"] for d in app["deployments"]} == checkpoints


def test_every_serving_node_has_the_api_key_and_the_serving_allocator_and_training_nodes_do_not():
    """Every node group of the RayService may host an ingress replica, and an ingress with no key
    serves its /v1 routes open: each container gets MATTING_API_KEY from the secret, and the
    allocator settings make serve's local cluster gets (serve_app.run.SERVING_MALLOC_ENV).
    raycluster.yaml (training, Tune, jobs) keeps glibc's defaults, under which torch's CPU tensors
    are not mapped afresh at every step."""
    from serve_app.run import SERVING_MALLOC_ENV

    def containers(doc: dict) -> list[dict]:
        spec = doc["spec"].get("rayClusterConfig", doc["spec"])
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [c for g in groups for c in g["template"]["spec"]["containers"]]

    def env(container: dict) -> dict:
        return {e["name"]: e.get("value") for e in container.get("env", []) if e["name"].startswith("MALLOC_")}

    service = containers(v.load_documents(KUBERAY / "rayservice.yaml")[0])
    assert len(service) >= 3 and all(env(c) == SERVING_MALLOC_ENV for c in service), [env(c) for c in service]
    keys = [next((e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if e["name"] == "MATTING_API_KEY"), None) for c in service]
    assert keys == ["matting-api-key"] * len(service), keys
    training = containers(v.load_documents(KUBERAY / "raycluster.yaml")[0])
    assert training and not any(env(c) for c in training)


def test_overlay_may_not_invent_apps_or_models(tmp_path):
    from infra import gen_rayservice as g

    source = v.load_documents(SERVE_CONFIG)[0]
    ghost = {"serve": {"applications": [{"name": "matting", "args": {"models": [{"name": "ghost", "checkpoint": "s3://b/g.pt"}]}}]}}
    with pytest.raises(g.OverlayError, match=r"serve.applications\[name=matting\].args.models: name 'ghost' is not in the base config"):
        g.serve_config(source, ghost)
    with pytest.raises(g.OverlayError, match="name 'other' is not in the base config"):
        g.serve_config(source, {"serve": {"applications": [{"name": "other"}]}})
    bad = tmp_path / "overlay.yaml"
    bad.write_text("serve: {}\nclusters: {}\n")
    with pytest.raises(g.OverlayError, match=r"unknown top-level keys \['clusters'\]"):
        g.render(overlay=bad)
    # The cluster part may add items (ports, env); named items merge instead of duplicating.
    spec = g.cluster_spec(one("RayCluster"), {"cluster": {"workerGroupSpecs": [{"groupName": "gpu", "minReplicas": 1}]}})
    assert [g_["groupName"] for g_ in spec["workerGroupSpecs"]] == [g_["groupName"] for g_ in one("RayCluster")["spec"]["workerGroupSpecs"]]
    assert spec["workerGroupSpecs"][0]["minReplicas"] == 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(proxy_location="Everywhere"), "not a valid Serve config"),
        (lambda c: c["http_options"].update(port="eighty"), "http_options.port"),
        (lambda c: c["applications"][0].update(import_path="serve_app.nope:app"), "import_path module 'serve_app.nope' not found"),
        (lambda c: c["applications"][0]["args"]["routing"].update(threshold=2), "routing.threshold: must be in [0, 1]"),
        (lambda c: c["applications"][0].update(deployments=[{"name": "model_lowlite"}]), "deployment 'model_lowlite' is not one of the app's"),
        (
            lambda c: c["applications"][0].update(deployments=[{"name": "model_base", "user_config": {"ckpt": "x"}}]),
            "user_config: unknown key 'ckpt'",
        ),
        (
            lambda c: c["applications"][0].update(deployments=[{"name": "ingress", "user_config": {"checkpoints": {"base": "s3://b/m.pt"}}}]),
            "needs model_deployment.placement: ingress",
        ),
        (
            lambda c: (c["applications"][0]["args"]["model_deployment"].update(placement="ingress"),
                       c["applications"][0].update(deployments=[{"name": "model_base"}])),
            "deployment 'model_base' is not one of the app's (ingress)",
        ),
        (
            lambda c: (c["applications"][0]["args"]["model_deployment"].update(placement="ingress"),
                       c["applications"][0].update(deployments=[{"name": "ingress", "user_config": {"checkpoints": {"night": "x.pt"}}}])),
            "expected a mapping of model names",
        ),
    ],
)
def test_serve_validator_rejects(edit, needle):
    config = copy.deepcopy(service_serve_config())
    edit(config)
    errors = v.serve_config_errors(config, "test")
    assert any(needle in e for e in errors), errors


def test_serve_validator_accepts_a_hot_swap_through_the_ingress():
    config = copy.deepcopy(service_serve_config())
    app = config["applications"][0]
    app["args"]["model_deployment"]["placement"] = "ingress"
    app["deployments"] = [{"name": "ingress", "user_config": {"checkpoints": {"base": "s3://bucket/base-v2.pt"}}}]
    assert v.serve_config_errors(config, "test") == []


# --------------------------------------------------------------------------- rehearsal


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_rehearsal_of_the_operators_guide(ray_cluster, s3_server, serve_port, tmp_path, capsys):
    """testkit/rehearse.py's steps on the session's cluster (started by the same
    ``testkit.local_ray.start_ray_head`` as ``python -m testkit.rehearse``, which adds its own
    ``ray start`` and stop): bucket + dataset + manifest in moto S3, ray job submit --working-dir .
    of the tiny config distilling from models/base.pt (SUCCEEDED), a client without the token
    refused, promotion, serve deploy, one request, a hot swap under load. A cluster of its own
    cost a second set of Ray daemons and Serve's controller and proxy (about 60 s of CPU on 2
    cores); the application is deleted afterwards, as the Serve modules delete theirs."""
    import uuid

    from serve_app.config import load_serve_yaml
    from testkit import rehearse
    from testkit.serve import remove_app

    bucket = f"rehearsal-{uuid.uuid4().hex[:8]}"
    try:
        n = rehearse.rehearse_on(ray_cluster, s3_server, serve_port, tmp_path, bucket)
    finally:
        remove_app(load_serve_yaml())  # the applications serve_app/config.yaml names, as the rehearsal deployed them
    out = capsys.readouterr().out
    for marker in (
        "ray job submit configs/tiny.yaml: ok",
        "a client without the token is refused: ok",
        "one request answered by models/tiny-v1.pt: ok",
        "hot swap to models/tiny-v2.pt under load: ok",
    ):
        assert marker in out, out[-4000:]
    assert n >= 2 and f"{n} requests during the swap, none failed" in out


def test_working_dir_package_leaves_the_history_and_the_venv_behind(tmp_path):
    """`ray job submit --working-dir .` zips the checkout with Ray's own packager: .rayignore keeps
    .git (the whole history, most of the bytes) out and .gitignore keeps .venv out, while the code,
    configs and shipped models a job needs go with it."""
    import zipfile
    from pathlib import Path

    from ray._private.runtime_env.packaging import create_package

    out = tmp_path / "pkg.zip"
    create_package(str(ROOT), out, include_gitignore=True)
    names = zipfile.ZipFile(out).namelist()
    assert not [n for n in names if n.startswith((".git/", ".venv/"))], [n for n in names if n.startswith(".git")][:5]
    for needed in ("ray_jobs/train.py", "configs/tiny.yaml", "models/base.pt", "serve_app/config.yaml"):
        assert needed in names, needed
    assert Path(out).stat().st_size < 60e6
