"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and a broken one is caught.

bench -> infra -> testkit -> {ray_jobs, serve_app} -> matting_lib; matting_lib never imports
ray; nothing outside tests/ imports tests; no import cycles between siblings. ``lint-imports``
(import-linter) checks them; so does this test, as part of ``make test``.
"""

from __future__ import annotations

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
