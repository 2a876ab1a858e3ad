"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and a broken one is caught.

bench -> testkit -> infra -> {ray_jobs, serve_app} -> matting_lib; matting_lib never imports
ray; nothing outside tests/ imports tests; no import cycles between siblings. ``lint-imports``
(import-linter) checks them; so does this test, as part of ``make test``.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from testkit import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(*config: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *config], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)


def test_the_layering_contracts_are_kept():
    r = _lint()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "BROKEN" not in r.stdout


def test_a_broken_contract_fails(tmp_path):
    """Deliberately wrong contracts, checked against the same code: each must be reported broken."""
    config = tmp_path / "broken.toml"
    config.write_text('''
[tool.importlinter]
root_packages = ["ray_jobs", "serve_app", "matting_lib"]
include_external_packages = true

[[tool.importlinter.contracts]]
id = "upside-down"
name = "matting_lib above the jobs (wrong on purpose)"
type = "layers"
layers = ["matting_lib", "ray_jobs"]

[[tool.importlinter.contracts]]
id = "serve-ray-free"
name = "serve_app never imports ray (wrong on purpose)"
type = "forbidden"
source_modules = ["serve_app"]
forbidden_modules = ["ray"]
''')
    r = _lint(str(config))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Contracts: 0 kept, 2 broken." in r.stdout, r.stdout
    assert "matting_lib above the jobs (wrong on purpose) BROKEN" in r.stdout


# --------------------------------------------------------------------------- declared dependencies

SHIPPED = ("matting_lib", "ray_jobs", "serve_app")
"""The packages of the wheel ([tool.setuptools.packages.find])."""


def _imports(folder: Path) -> set[str]:
    """Every module named by an absolute import in ``folder`` (``import a.b`` and ``from a.b import c``: ``a.b``)."""
    import ast

    out: set[str] = set()
    for f in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module)
    return out


def _third_party_imports(folder: Path) -> set[str]:
    """Top-level names of the imports in ``folder`` that are neither the standard library nor this project."""
    own = {"matting_lib", "ray_jobs", "serve_app", "testkit", "infra", "bench", "tests", "conftest", "__future__"}
    tops = {m.split(".")[0] for m in _imports(folder)}
    return {n for n in tops if n not in sys.stdlib_module_names and n not in own}


def _requirement_names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    """Top-level module -> distributions (one scan of the environment: each scan takes seconds)."""
    import importlib.metadata as md

    return md.packages_distributions()


def _distributions(module: str) -> set[str]:
    dists = _packages_distributions().get(module)
    assert dists, f"{module}: imported but no installed distribution provides it"
    return {d.lower().replace("_", "-") for d in dists}


def test_every_imported_third_party_module_is_declared():
    """matting_lib, ray_jobs and serve_app import only what [project] dependencies (or an extra
    they document, optuna for TPE) name; testkit and the tests only what the test extra adds."""
    project = _pyproject()["project"]
    shipped = _requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    optional = {"optuna": _requirement_names(extras["tune"])}  # ray_jobs.tune imports it only when installed
    missing = {}
    for pkg in SHIPPED:
        for module in sorted(_third_party_imports(ROOT / pkg)):
            allowed = shipped | optional.get(module, set())
            if not _distributions(module) & allowed:
                missing[f"{pkg}: {module}"] = sorted(_distributions(module))
    with_tests = shipped | _requirement_names(extras["test"])
    for folder in ("testkit", "tests"):
        for module in sorted(_third_party_imports(ROOT / folder)):
            if not _distributions(module) & with_tests:
                missing[f"{folder}: {module}"] = sorted(_distributions(module))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_wheel_ships_only_the_three_packages():
    """testkit, infra, bench and tests stay in the checkout: the package finder's include list
    names the shipped packages and nothing else, and none of them imports testkit."""
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(SHIPPED)
    for pkg in SHIPPED:
        assert "testkit" not in {n.split(".")[0] for n in _imports(ROOT / pkg)}, pkg

