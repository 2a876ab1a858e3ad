"""ray_jobs.tune on a real local Ray cluster: an ASHA sweep of the tiny config, interrupted and
resumed, with its outputs checked against Tune's own per-trial result files and the best YAML
accepted by the training job; config and resource errors. Plus the search-space rules, which
need no cluster."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from matting_lib.config import ConfigError, ScalingSettings, TrainConfig, load_config
from testkit import ROOT
from testkit.data import write_dataset

SWEEP_TINY = str(ROOT / "configs" / "sweep_tiny.yaml")
TINY = str(ROOT / "configs" / "tiny.yaml")
# Two epochs per trial keep the module short; ASHA can still stop a trial after its first.
SHORT = "space.stages.0.epochs=[2]"


@pytest.fixture(scope="module")
def dataset(ray_cluster, tmp_path_factory) -> str:
    """The seeds' layout: images/, masks/ and train.txt only (validation is a seeded 10% of train.txt)."""
    return write_dataset(str(tmp_path_factory.mktemp("tune-data")), n_train=10, n_val=0, size=64)


def _snapshot(root: str) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


def _args(dataset: str, storage: Path, *extra: str) -> list[str]:
    return ["--config", SWEEP_TINY, f"base_config={TINY}", f"train.data.uri={dataset}", f"storage_path={storage}", SHORT, *extra]


def _tune_results(sweep_dir: Path) -> dict[str, list[dict]]:
    """Each trial's reported rows, read straight from Tune's result.json files."""
    out = {}
    for f in sweep_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_asha_sweep_interrupted_resumes_and_writes_table_plot_best_yaml_and_checkpoint(ray_cluster, dataset, tmp_path, capsys):
    """Two trials, one at a time: a usable learning rate, then one too small to learn, which ASHA
    stops at its first epoch against the first trial's result. Ctrl-C once the first trial
    has checkpointed its first epoch: exit 1 and "relaunch". The same command again resumes that
    trial from its checkpoint (no epoch reported twice, none restarted at 1), runs the second,
    and writes the table, plot, best YAML and checkpoint, all checked against Tune's own
    per-trial result files; the best YAML is accepted by the training job. A changed config
    under the same name is refused. (The configs' own 4-trial grid, two at a time, is the same
    code; each trial costs ~25 s of CPU here.)"""
    import cv2
    import ray

    from matting_lib.checkpoint import load_checkpoint
    from ray_jobs.run_data import absolute_paths
    from ray_jobs.tune import report as tune_report, runner as tune_runner, search as tune_search, space as tune_space  # noqa: F401
    from ray_jobs.common import load_job_config
    from ray_jobs.trainer import prepare_data

    storage = tmp_path / "sweeps"
    sweep_dir = storage / "asha"
    before = _snapshot(dataset)
    space = "space={loss.l1: [1.5], lr: [3.0e-3, 1.0e-7], stages.0.epochs: [3]}"
    args = _args(dataset, storage, "name=asha", space, "search.max_concurrent_trials=1")

    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would stall the sweep
    with open(log, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.tune", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            deadline = time.monotonic() + 300
            while not list(sweep_dir.glob("train/*/checkpoint_*")) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "relaunch the same command to continue" in err
    first = _csv(sweep_dir / "results.csv")[0]
    assert first["status"] != "TERMINATED" and int(first["epochs_run"]) < 3 and float(first["lr"]) == 3e-3, first
    early = {t: [r["epochs_done"] for r in rows] for t, rows in _tune_results(sweep_dir).items()}  # Tune may not have epoch 1 yet

    assert tune_runner.main(args) == 0
    out = capsys.readouterr().out
    assert "sweep asha: resuming" in out
    # No val.txt: the sweep validates on a seeded 10% of train.txt and builds the manifest in
    # its own folder, never in the dataset.
    assert "holding out 1 of 10 'train' samples for validation (10%, seed 0" in out
    assert f"data: {sweep_dir / 'manifest.jsonl'}: 9 train / 1 val samples" in out
    assert _snapshot(dataset) == before

    reported = _tune_results(sweep_dir)
    table = _csv(sweep_dir / "results.csv")
    assert len(table) == len(reported) == 2
    for row in table:
        rows = reported[row["trial"]]
        epochs = [r["epochs_done"] for r in rows]
        assert epochs == sorted(set(epochs)) and epochs[: len(early.get(row["trial"], []))] == early.get(row["trial"], []), epochs
        assert int(row["epochs_run"]) == epochs[-1] and row["epochs_planned"] == "3"
        best = min(rows, key=lambda r: r["val_sad"])
        assert float(row["best_val_sad"]) == pytest.approx(best["val_sad"], rel=1e-9)
        assert float(row["best_val_mse"]) == pytest.approx(best["val_mse"], rel=1e-9)
        assert float(row["best_val_grad"]) == pytest.approx(best["val_grad"], rel=1e-9)
        assert row["status"] == "TERMINATED"
    assert table[0]["trial"] == first["trial"]
    resumed = [r["epochs_done"] for r in reported[first["trial"]]]
    assert resumed[-1] == 3 and resumed[len(early.get(first["trial"], []))] >= 2, resumed  # continued, not restarted at epoch 1
    # The usable learning rate ran to the end; the one that cannot learn was stopped early.
    # (ASHA decides at the first rung, epoch 1; the trial may report one more epoch before the stop reaches it.)
    assert [(float(r["lr"]), r["stopped_early"]) for r in table] == [(3e-3, "False"), (1e-7, "True")]
    assert table[0]["epochs_run"] == "3" and table[1]["epochs_run"] in ("1", "2"), table
    sads = [float(r["best_val_sad"]) for r in table]
    assert sads == sorted(sads)
    md = (sweep_dir / "results.md").read_text().splitlines()
    assert md[0].startswith("| trial | loss.l1 | lr | stages.0.epochs | best_val_sad") and len(md) == 2 + 2

    plot = cv2.cvtColor(cv2.imread(str(sweep_dir / "val_sad.png")), cv2.COLOR_BGR2RGB)
    assert plot.shape == (540, 960, 3)
    hits = [int(np.all(plot == np.array(c, np.uint8), axis=-1).sum()) for c in tune_report.PALETTE[:2]]
    assert all(h > 20 for h in hits), hits  # one curve (and legend swatch) per trial

    best_yaml = sweep_dir / "best.yaml"
    cfg = load_config(best_yaml)
    assert isinstance(cfg, TrainConfig) and cfg.run.name == "asha-best"
    assert cfg.stages[0].lr == float(table[0]["lr"]) and cfg.total_epochs == 3
    assert cfg.loss.l1 == float(table[0]["loss.l1"]) == 1.5  # the trial's value, not the base config's 1.0
    assert cfg.data.uri == dataset and cfg.scaling.num_workers == 2  # the base config's scaling, not the trials'

    ck_uri = f"{sweep_dir}/train/{table[0]['trial']}/best.pt"
    assert f"best checkpoint: {ck_uri}" in out
    ck = load_checkpoint(ck_uri)
    assert ck.metrics["val_sad"] == pytest.approx(float(table[0]["best_val_sad"]), rel=1e-9)
    assert ck.train_config["loss"]["l1"] == cfg.loss.l1
    ck.build_model()

    # Stopped trials released their workers: the whole cluster is free again.
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 1.99 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) >= 1.99

    # The training job takes the best YAML as is: its config loader and every driver-side check
    # before Ray (dataset, splits, manifest in the run folder). Fitting that config is what the
    # trials above just did, and tests/test_training_faults.py covers the job end to end.
    job_cfg = absolute_paths(load_job_config(str(best_yaml), [f"run.storage_path={tmp_path / 'final'}"]))
    data = prepare_data(job_cfg)
    assert (len(data.train_rows), len(data.val_rows)) == (9, 1) and data.fingerprint.startswith("sha256:")
    assert (tmp_path / "final" / "asha-best" / "manifest.jsonl").exists()

    with pytest.raises(SystemExit) as e:
        tune_runner.main([*args, "asha.reduction_factor=3"])
    assert e.value.code == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_config_and_resource_errors_exit_2_with_one_line(ray_cluster, dataset, tmp_path, capsys):
    from ray_jobs.tune import report as tune_report, runner as tune_runner, search as tune_search, space as tune_space  # noqa: F401

    cases = [
        (["space={}"], "space: empty search space"),
        (["space.dropout=[0.1]"], "space.dropout: unknown parameter"),
        (["space.stages.3.epochs=[1]"], "space.stages.3.epochs: the base config has 1 stage"),
        (["space.loss.edge=[-1.0]"], "space.loss.edge: value -1.0 is invalid"),
        (["resources.num_workers=4", "resources.cpus_per_worker=1"], "resources: a trial needs 4.46 CPUs (4 worker(s) x 1.0 CPU + 0.45 data CPU + 0.01)"),
        (["resources.use_gpu=true"], "resources: a trial needs 1 GPU(s)"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as e:
            tune_runner.main(_args(dataset, tmp_path, *extra))
        assert e.value.code == 2, extra
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, (extra, err)

    # The command line: exit 2, one line, no traceback, no cluster needed.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-m", "ray_jobs.tune", *_args(dataset, tmp_path, "search.algorithm=random", "space.lr={distribution: normal, low: 1, high: 2}")],
        cwd=ROOT, capture_output=True, text=True, timeout=90, env=env,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: config error: space.lr.distribution: must be one of ['loguniform', 'uniform', 'int'], got 'normal'", r.stderr


# --------------------------------------------------------------------------- no cluster


def _base() -> TrainConfig:
    return load_config(ROOT / "configs" / "lowlight.yaml")


def test_shipped_lowlight_sweep_is_valid_and_lr_keeps_stage_ratios():
    from ray_jobs.tune import report as tune_report, runner as tune_runner, search as tune_search, space as tune_space  # noqa: F401

    sweep = load_config(ROOT / "configs" / "sweep_lowlight.yaml", cls=tune_space.SweepConfig)
    assert sweep.base_config == "configs/lowlight.yaml"
    base = tune_space.load_base(sweep)
    params = tune_space.parse_space(sweep.space, base, "random")
    assert set(params) == {"lr", "loss.l1", "loss.grad", "loss.laplacian", "loss.ssim", "loss.edge", "model.lowlight",
                           "stages.0.epochs", "stages.1.epochs", "stages.2.epochs"}
    assert tune_space.max_epochs(base, params) == 6 + 8 + 12
    cfg = tune_space.trial_config(base, {"lr": 2e-3, "stages.1.epochs": 7, "model.lowlight": False, "loss.edge": 0.25})
    assert cfg.stages[0].lr == 2e-3
    for old, new in zip(base.stages, cfg.stages):
        assert new.lr / old.lr == pytest.approx(2.0)
        assert (new.encoder_lr is None) == (old.encoder_lr is None)
        if new.encoder_lr is not None:
            assert new.encoder_lr / old.encoder_lr == pytest.approx(2.0)
    assert cfg.stages[1].epochs == 7 and not cfg.model.lowlight and cfg.loss.edge == 0.25
    assert cfg.loss.l1 == base.loss.l1 and cfg.data == base.data


def test_search_space_domains_and_rules():
    from ray import tune as rt

    from ray_jobs.tune import report as tune_report, runner as tune_runner, search as tune_search, space as tune_space  # noqa: F401

    base = _base()
    space = {"lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3}, "loss": {"ssim": [0.0, 0.5]},
             "stages.0.epochs": {"distribution": "int", "low": 1, "high": 3}}
    params = tune_space.parse_space(space, base, "random")
    lr, ssim, epochs = (params[n].domain("random") for n in ("lr", "loss.ssim", "stages.0.epochs"))
    assert isinstance(lr.get_sampler(), rt.search.sample.LogUniform) and (lr.lower, lr.upper) == (1e-5, 1e-3)
    assert ssim.categories == [0.0, 0.5]
    assert (epochs.lower, epochs.upper) == (1, 4)  # randint excludes its upper end: 3 is included
    assert tune_space.max_epochs(base, params) == 3 + 6 + 10
    assert params["loss.ssim"].domain("grid") == {"grid_search": [0.0, 0.5]}
    bad = [
        ({"lr": {"distribution": "loguniform", "low": 0, "high": 1}}, "random", "space.lr.low: loguniform needs low > 0"),
        ({"lr": {"distribution": "uniform", "low": 1, "high": 1}}, "random", "space.lr: low must be < high"),
        ({"lr": {"distribution": "uniform", "low": 1e-4, "high": 1e-3}}, "grid", "space.lr: grid search needs a list"),
        ({"lr": [0.0]}, "random", "space.lr: value 0.0 is invalid"),
        ({"loss.l1": []}, "random", "space.loss.l1: empty list"),
        ({"model.lowlight": ["yes"]}, "random", "model.lowlight: must be true or false"),
        ({"stages.0.epochs": [0]}, "random", "stages.0.epochs: value 0 is invalid"),
        ({"model": {}}, "random", "space: empty search space"),
    ]
    for space, algorithm, needle in bad:
        with pytest.raises(ConfigError, match=None) as e:
            tune_space.parse_space(space, base, algorithm)
        assert needle in str(e.value), (space, str(e.value))


def test_concurrency_from_cluster_and_trial_resources():
    from ray_jobs.tune import report as tune_report, runner as tune_runner, search as tune_search, space as tune_space  # noqa: F401

    cpu_trial = ScalingSettings(num_workers=1, cpus_per_worker=0.5, data_cpus=0.25)
    assert tune_search.concurrency(cpu_trial, {"CPU": 2.0}) == 2  # 0.76 CPU per trial
    assert tune_search.concurrency(cpu_trial, {"CPU": 2.0}, cap=1) == 1
    assert tune_search.concurrency(cpu_trial, {"CPU": 16.0}) == 21
    gpu_trial = ScalingSettings(num_workers=2, use_gpu=True, cpus_per_worker=2, data_cpus=1)
    assert tune_search.concurrency(gpu_trial, {"CPU": 64.0, "GPU": 8.0}) == 4  # GPU-bound: 8 / 2
    assert tune_search.concurrency(gpu_trial, {"CPU": 11.0, "GPU": 8.0}) == 2  # CPU-bound: 11 / 5.01
    with pytest.raises(ConfigError, match="needs 2 GPU"):
        tune_search.concurrency(gpu_trial, {"CPU": 64.0, "GPU": 1.0})


def test_tpe_search_when_optuna_is_installed():
    pytest.importorskip("optuna")
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ray_jobs.tune import report as tune_report, runner as tune_runner, search as tune_search, space as tune_space  # noqa: F401

    assert tune_search.resolve_algorithm("auto") == "tpe"
    alg = tune_search.make_search_alg("tpe", seed=0, max_concurrent=3)
    assert isinstance(alg, ConcurrencyLimiter) and isinstance(alg.searcher, OptunaSearch) and alg.max_concurrent == 3
