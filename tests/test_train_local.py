"""ray_jobs.train_local: one-device training without Ray (the GPU-box path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from matting_lib.checkpoint import load_checkpoint
from matting_lib.data.manifest import ensure_manifest, read_manifest
from matting_lib.data.samples import SampleLoader
from ray_jobs.train_local import RowsDataset, _seed_worker
from testkit.data import write_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")

# Runs main() in a fresh interpreter and reports whether anything imported Ray.
DRIVER = (
    "import sys; from ray_jobs import train_local; rc = train_local.main(sys.argv[1:]); "
    "print('RAY_IMPORTED', any(m == 'ray' or m.startswith('ray.') for m in sys.modules), flush=True); sys.exit(rc)"
)


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_dataset(str(tmp_path_factory.mktemp("ds")), n_train=12, n_val=4)


@pytest.mark.timeout(300)
def test_trains_saves_and_resumes_without_ray(dataset, tmp_path):
    args = ["--config", TINY, f"data.uri={dataset}", f"run.storage_path={tmp_path}", "run.name=local",
            "stages.0.epochs=2", "--workers", "2", "--device", "cpu"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RAY_IMPORTED False" in r.stdout, r.stdout
    assert "epoch 2/2" in r.stdout
    best = tmp_path / "local" / "best.pt"
    ck = load_checkpoint(str(best))
    assert ck.data_fingerprint.startswith("sha256:")
    assert ck.train_config["data"]["uri"] == dataset
    history = json.loads((tmp_path / "local" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    assert all(np.isfinite(row["val_sad"]) for row in history)
    assert ck.metrics["val_sad"] == pytest.approx(min(row["val_sad"] for row in history))  # named as ray_jobs.train does

    again = _run(*args)  # the same command: resumes from best.pt.last, nothing left to do
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming at epoch 3" in again.stdout
    assert "epoch 1/2" not in again.stdout
    assert len(json.loads((tmp_path / "local" / "history.json").read_text())) == 2


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.timeout(300)
def test_seed_format_without_val_txt_holds_out_and_leaves_the_dataset_alone(tmp_path):
    """images/, masks/ and train.txt only (the seeds' layout): a seeded 10% of train.txt validates,
    the log says so, and the manifest goes to the run folder, not into the dataset."""
    ds = tmp_path / "seed-format"
    write_dataset(str(ds), n_train=10, n_val=0)
    before = _tree(ds)
    r = _run("--config", TINY, f"data.uri={ds}", f"run.storage_path={tmp_path / 'runs'}", "run.name=noval",
             "stages.0.epochs=1", "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "holding out 1 of 10 'train' samples for validation (10%, seed 0" in r.stdout, r.stdout
    assert "9 train / 1 val samples" in r.stdout
    assert _tree(ds) == before  # nothing written, nothing touched
    manifest = tmp_path / "runs" / "noval" / "manifest.jsonl"
    assert f"data: {manifest}:" in r.stdout
    assert len(read_manifest(str(manifest), split="train")) == 10
    assert np.isfinite(load_checkpoint(str(tmp_path / "runs" / "noval" / "best.pt")).metrics["val_sad"])


@pytest.mark.timeout(120)
def test_loader_workers_draw_different_augmentations(dataset):
    """Forked workers must not replay one random stream (every worker would crop alike)."""
    rows = read_manifest(ensure_manifest(dataset, progress=False), split="train")[:1] * 4
    ds = RowsDataset(rows, SampleLoader(size=48, augment="standard", train=True, seed=0))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=_seed_worker,
                                         generator=torch.Generator().manual_seed(0))
    images = [b["image"][0] for b in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1
    assert not torch.equal(images[0], images[1])
    assert not torch.equal(images[2], images[3])


@pytest.mark.timeout(120)
def test_bad_inputs_fail_with_one_line(dataset, tmp_path, capsys):
    """Exit 2 with one clear line and no traceback. In-process (each case a fresh parse); the
    command line itself is exercised by the training test above."""
    from ray_jobs.train_local import main

    base = ["--config", TINY, f"run.storage_path={tmp_path}"]
    cases = [
        ([], "data.uri is empty"),
        (["data.uri=/nonexistent/ds"], "dataset not found"),
        (["data.uri=.", "stages.0.lr=-1"], "config error"),
        (["data.uri=.", "distill.weight=2"], "distill.weight"),
        ([f"data.uri={dataset}", f"distill.teacher={tmp_path}/none.pt"], "distill.teacher:"),
    ]
    if not torch.cuda.is_available():  # the no-GPU message
        cases.append(([f"data.uri={dataset}", "--device", "cuda"], "CUDA is not available"))
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            main([*base, *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2, (extra, err)
        assert message in err and "Traceback" not in err, (extra, err)


def test_overrides_may_come_before_and_after_options():
    """``... --config c.yaml data.uri=x --workers 1 stages.0.lr=1e-4``: both overrides are kept
    (plain parse_args stopped with "unrecognized arguments")."""
    from ray_jobs import train_local
    from ray_jobs.common import job_parser

    args = train_local.parse_args(["--config", "c.yaml", "data.uri=x", "--workers", "1", "stages.0.lr=1e-4"])
    assert args.overrides == ["data.uri=x", "stages.0.lr=1e-4"] and args.workers == 1
    args = job_parser("t").parse_intermixed_args(["--config", "c.yaml", "a=1", "--address", "auto", "b=2"])
    assert args.overrides == ["a=1", "b=2"] and args.address == "auto"
