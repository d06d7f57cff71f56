"""The training stages on tf.distribute: two local workers (real processes, real TF_CONFIG, free
ports on 127.0.0.1) for simple_nn and the emotion CNN, the mirrored strategy on one CPU, a worker
that dies, and the resume after it.

Tolerances:

- simple_nn (SGD): two workers sum the halves' gradients in another order than one process sums
  the whole batch's, so their weights differ in the last bits (measured: 1.2e-7 after 20 epochs);
  WEIGHT_TOLERANCE allows 100 times that. The mirrored strategy on one device runs the very same
  ops: its weights equal those of `none` exactly (checked exactly).
- emotion CNN (Adam, batch norm synchronized over the workers): Adam moves every weight by about
  ``learning_rate`` a step whatever the size of its gradient, so weights whose gradient is
  rounding noise (the biases of the convolutions that batch norm cancels) end up to a few
  learning rates apart; one process run with other kernels (``EAGER_PIPELINE_NUMERICS=fast``)
  differs from itself as much (measured 8.1e-3). So the bound is Adam's: at most one learning
  rate a step, 18 steps here (CNN_WEIGHT_TOLERANCE: 1.8e-2). Measured, two workers vs one
  after 3 epochs: weights 2.9e-3 apart with TF's approximate rsqrt in batch norm, 1.09e-2 with
  the exact one (stages/common/numerics.py; another draw of the same rounding noise), first-epoch
  training loss within 2.3e-5 relatively (CNN_LOSS_TOLERANCE: 2e-4); with batch norm *not*
  synchronized the first epoch's loss is already 1.0e-3 off, so the loss check tells the two apart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, copy_project, project_files, stage_env
from stages.apps.launch_workers import free_ports, tf_configs

WEIGHT_TOLERANCE = 1e-5
EPOCHS = 10
TIMEOUT_S = 120  # any one command of these tests
CNN = "train_emotion_cnn"
CNN_LOSS_TOLERANCE = 2e-4
CNN_EPOCHS = 3
FACES = {"training": 384, "public_test": 64, "private_test": 64}
# A narrow network; dropout off, since each replica draws its own masks for its share of a batch.
CNN_PARAMS = {
    "block_filters": [[4, 4], [4, 8], [8, 8], [8, 16]],
    "head_filters": [16, 16, 16],
    "dropout": [0.0, 0.0, 0.0, 0.0],
    "max_epochs": CNN_EPOCHS,
    "patience": 3,
    "ig_steps": 4,
}
CNN_LEARNING_RATE, CNN_BATCH = 1e-3, 64  # params.yaml's train_emotion_cnn defaults (checked in the test)
# Adam moves a weight by at most about one learning rate a step (see the module docstring).
CNN_WEIGHT_TOLERANCE = CNN_EPOCHS * -(-FACES["training"] // CNN_BATCH) * CNN_LEARNING_RATE


@pytest.fixture(scope="module")
def moons_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml, the stages and data/toy (from the toy_data stage), copied fresh by each test."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(tmp_path_factory.mktemp("distribute") / "template", files)
    subprocess.run([sys.executable, "-m", "stages.toy_data"], cwd=root, env=stage_env(), check=True, timeout=TIMEOUT_S)
    return root


@pytest.fixture(scope="module")
def faces_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml, the stages and the TFRecords of a small FER2013 sample in one shard per split
    (fewer shards than workers: each worker takes every other face, so a step sees exactly the
    batch one process sees)."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(tmp_path_factory.mktemp("distribute-faces") / "template", files)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fer2013"]["sample"] |= FACES
    params["tfrecords_fer2013"]["num_shards"] = 1
    params[CNN] |= CNN_PARAMS
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download_fer2013", "tfrecords_fer2013"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=stage_env(), check=True, timeout=120)
    return root


def project(template: Path, dest: Path, strategy: str, section: str = "simple_nn", **values: object) -> Path:
    """A copy of ``template`` with ``distribute.strategy`` and the stage's params ``section`` set
    (simple_nn: EPOCHS epochs unless ``values`` say otherwise)."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    dest.mkdir(parents=True)
    for name in [*files, *(p.relative_to(template).as_posix() for p in (template / "data").rglob("*") if p.is_file())]:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes((template / name).read_bytes())
    params = yaml.safe_load((dest / "params.yaml").read_text())
    # No collective timeout (the default): a dead worker must be caught by the heartbeats alone, and
    # a 10 s one failed healthy workers in CI when one lagged behind the other on the busy 2 cores.
    params["distribute"] = {**params.get("distribute", {}), "strategy": strategy}
    defaults = {"epochs": EPOCHS} if section == "simple_nn" else {}
    params[section] = {**params[section], **defaults, **values}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def files_of(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".git" not in p.parts
    }


def weights(root: Path, model: str = "simple_nn") -> list[np.ndarray]:
    import h5py  # type: ignore[import-untyped]

    found: list[tuple[str, np.ndarray]] = []
    with h5py.File(root / "models" / model / "model.weights.h5", "r") as file:
        file.visititems(lambda name, obj: found.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return [array for _, array in sorted(found, key=lambda item: item[0])]


def run_stage(root: Path, env: dict[str, str] | None = None, stage: str = "simple_nn") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=root,
        env={**stage_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def start_worker(root: Path, config: str, tmpdir: Path, log: Path, stage: str = "simple_nn") -> subprocess.Popen:
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**stage_env(), "TF_CONFIG": config, "TMPDIR": str(tmpdir)}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_all(processes: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def assert_close(a: list[np.ndarray], b: list[np.ndarray], tolerance: float) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    assert diff <= tolerance, f"weights differ by {diff} > {tolerance}"
    return diff


@pytest.fixture(scope="module")
def single(moons_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simple_nn trained by one process (strategy none): the reference."""
    root = project(moons_project, tmp_path_factory.mktemp("single") / "p", "none")
    result = run_stage(root)
    assert result.returncode == 0, result.stderr
    return root


def test_mirrored_on_one_device_equals_none(moons_project: Path, single: Path, tmp_path: Path) -> None:
    root = project(moons_project, tmp_path / "p", "mirrored")
    result = run_stage(root)
    assert result.returncode == 0, result.stderr
    assert_close(weights(root), weights(single), 0.0)
    assert json.loads((root / "metrics/simple_nn.json").read_text()) == json.loads(
        (single / "metrics/simple_nn.json").read_text()
    )


def test_two_workers_match_one_and_only_the_chief_writes(moons_project: Path, single: Path, tmp_path: Path) -> None:
    # Each worker in its own copy of the workspace (as on two hosts), so that what each wrote shows.
    chief, other = (project(moons_project, tmp_path / name, "multi_worker") for name in ("chief", "other"))
    before = files_of(other)
    configs = tf_configs(free_ports(2))
    logs = [tmp_path / "chief.log", tmp_path / "other.log"]
    started = time.monotonic()
    processes = [
        start_worker(chief, configs[0], tmp_path / "tmp0", logs[0]),
        start_worker(other, configs[1], tmp_path / "tmp1", logs[1]),
    ]
    codes = wait_all(processes)
    elapsed = time.monotonic() - started
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    diff = assert_close(weights(chief), weights(single), WEIGHT_TOLERANCE)
    print(f"two workers: {elapsed:.1f} s, weights within {diff:.3g} of one process's")
    metrics = json.loads((chief / "metrics/simple_nn.json").read_text())
    reference = json.loads((single / "metrics/simple_nn.json").read_text())
    assert metrics["epochs"] == reference["epochs"] == EPOCHS
    assert metrics["train_accuracy"] == reference["train_accuracy"]
    assert abs(metrics["train_loss"] - reference["train_loss"]) <= 1e-5
    # The chief wrote what one process writes; the other worker nothing, and removed its temporary folders.
    assert files_of(chief) - before == files_of(single) - before
    assert files_of(other) == before
    assert not any((tmp_path / "tmp1").iterdir()), list((tmp_path / "tmp1").iterdir())
    assert elapsed < 90, elapsed


def history(root: Path, stage: str) -> list[dict[str, float]]:
    lines = (root / "plots" / stage / "history.tsv").read_text().splitlines()
    names = lines[0].split("\t")
    return [dict(zip(names, map(float, line.split("\t")), strict=True)) for line in lines[1:]]


def test_emotion_cnn_on_two_workers_matches_one_and_only_the_chief_writes(faces_project: Path, tmp_path: Path) -> None:
    defaults = yaml.safe_load((faces_project / "params.yaml").read_text())[CNN]
    assert (defaults["learning_rate"], defaults["batch_size"]) == (CNN_LEARNING_RATE, CNN_BATCH)
    single = project(faces_project, tmp_path / "single", "none", CNN)
    result = run_stage(single, stage=CNN)
    assert result.returncode == 0, result.stderr[-3000:]
    chief, other = (project(faces_project, tmp_path / name, "multi_worker", CNN) for name in ("chief", "other"))
    before = files_of(other)
    configs = tf_configs(free_ports(2))
    logs = [tmp_path / "chief.log", tmp_path / "other.log"]
    processes = [
        start_worker(chief, configs[0], tmp_path / "tmp0", logs[0], CNN),
        start_worker(other, configs[1], tmp_path / "tmp1", logs[1], CNN),
    ]
    codes = wait_all(processes)
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    diff = assert_close(weights(chief, "emotion_cnn"), weights(single, "emotion_cnn"), CNN_WEIGHT_TOLERANCE)
    two, one = history(chief, CNN), history(single, CNN)
    assert len(two) == len(one) == CNN_PARAMS["max_epochs"]
    gaps = [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(two, one, strict=True)]
    print(f"emotion CNN on two workers: weights within {diff:.3g}, training loss within {max(gaps):.3g} (relative)")
    assert gaps[0] <= CNN_LOSS_TOLERANCE, gaps
    assert max(gaps) <= 10 * CNN_LOSS_TOLERANCE, gaps
    # The chief wrote what one process writes (model, SavedModel, metrics, plots); the other nothing.
    assert files_of(chief) - before == files_of(single) - before
    assert files_of(other) == before
    assert not any((tmp_path / "tmp1").iterdir()), list((tmp_path / "tmp1").iterdir())


def launch_two_workers(root: Path) -> subprocess.CompletedProcess[str]:
    """``python -m stages.apps.launch_workers -n 2 -- python -m stages.simple_nn`` in ``root``."""
    return subprocess.run(
        [sys.executable, "-m", "stages.apps.launch_workers", "-n", "2", "--", sys.executable, "-m", "stages.simple_nn"],
        cwd=root,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_launcher_runs_two_workers(moons_project: Path, single: Path, tmp_path: Path) -> None:
    root = project(moons_project, tmp_path / "p", "multi_worker")
    result = launch_two_workers(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker 1: simple_nn: epoch 1 loss" in result.stderr
    assert_close(weights(root), weights(single), WEIGHT_TOLERANCE)


@pytest.mark.parametrize("strategy", ["none", "mirrored"])
def test_a_one_process_strategy_under_a_cluster_is_refused(moons_project: Path, tmp_path: Path, strategy: str) -> None:
    # mirrored under TF_CONFIG: every worker would train alone and think itself the chief.
    root = project(moons_project, tmp_path / "p", strategy)
    result = run_stage(root, env={"TF_CONFIG": tf_configs(free_ports(2))[0]})
    assert result.returncode == 2, result.stderr
    assert f"distribute.strategy is {strategy}" in result.stderr
    assert not (root / "metrics").exists()


def test_a_dead_worker_stops_the_chief_and_a_rerun_resumes(moons_project: Path, tmp_path: Path) -> None:
    epochs = 60
    root = project(moons_project, tmp_path / "p", "multi_worker", epochs=epochs, checkpoint_every_s=0.0)
    configs = tf_configs(free_ports(2))
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    chief = start_worker(root, configs[0], tmp_path / "tmp0", logs[0])
    other = start_worker(root, configs[1], tmp_path / "tmp1", logs[1])
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list((root / "checkpoints/simple_nn").glob("*/checkpoint")):
            assert time.monotonic() < deadline and chief.poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(0.5)  # a few more epochs
        other.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = chief.wait(timeout=60)
        stopped_after = time.monotonic() - killed
    finally:
        wait_all([chief, other], timeout=1)
    text = logs[0].read_text()
    assert code == 2, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "worker" in errors[0], text[-3000:]
    # TensorFlow's own multi-line log of the abort is dropped: the error line says it (issue 23).
    assert "RingReduce" not in text and "StartAbort" not in text and "task:1\n" not in text, text[-3000:]
    assert stopped_after < 40, stopped_after
    assert not (root / "metrics/simple_nn.json").exists()
    (saved,) = (root / "checkpoints/simple_nn").glob("*/checkpoint")
    epoch = int(saved.read_text().split('"')[1].rsplit("-", 1)[1])
    assert 0 < epoch < epochs

    result = launch_two_workers(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "worker 1: simple_nn: resumed from" in result.stderr
    assert json.loads((root / "metrics/simple_nn.json").read_text())["epochs"] == epochs
    assert not list((root / "checkpoints/simple_nn").glob("*/checkpoint"))
    # The interrupted and resumed run ends where one uninterrupted process does.
    reference = project(moons_project, tmp_path / "reference", "none", epochs=epochs, checkpoint_every_s=0.0)
    single = run_stage(reference)
    assert single.returncode == 0, single.stderr
    diff = assert_close(weights(root), weights(reference), WEIGHT_TOLERANCE)
    print(f"chief stopped {stopped_after:.1f} s after worker 1 was killed at epoch ~{epoch}; resumed: {diff:.3g}")


def test_distribute_section_defaults_and_errors(tmp_path: Path) -> None:
    from stages.common.cli import StageError
    from stages.common.distribute import load_distribute, make_strategy

    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(StageError, match=r"^\S*params\.yaml: distribute: missing section$"):
        load_distribute(path)
    default = load_distribute(ROOT / "params.yaml")
    assert default.strategy == "none"  # one process, as the tutorials
    assert default.timeout_s is None  # heartbeats catch a dead worker; no per-collective timeout
    assert make_strategy(default) is None
    path.write_text("seed: 1\ndistribute: {strategy: multi_worker, timeout_s: 30, cluster_timeout_s: 300.0}\n")
    assert load_distribute(path).timeout_s == 30.0
    path.write_text("seed: 1\ndistribute: {strategy: multi_worker, timeout_s: 30}\n")
    with pytest.raises(StageError, match=r"distribute\.cluster_timeout_s: missing key$"):
        load_distribute(path)
    path.write_text("seed: 1\ndistribute: {strategy: gpus}\n")
    with pytest.raises(StageError, match=r"distribute\.strategy: must be 'none', 'mirrored' or 'multi_worker'"):
        load_distribute(path)
    path.write_text("seed: 1\ndistribute: {strategy: mirrored, timeout_s: 0}\n")
    with pytest.raises(StageError, match=r"distribute\.timeout_s: must be greater than 0"):
        load_distribute(path)


def test_multi_worker_without_tf_config_is_refused(moons_project: Path, tmp_path: Path) -> None:
    root = project(moons_project, tmp_path / "p", "multi_worker")
    result = run_stage(root, env={"TF_CONFIG": ""})
    assert result.returncode == 2, result.stderr
    assert "TF_CONFIG is not set" in result.stderr and "Traceback" not in result.stderr


def test_a_model_built_outside_the_strategy_scope_is_refused() -> None:
    import keras
    import tensorflow as tf

    from stages.common.training import Trainer

    strategy = tf.distribute.MirroredStrategy()

    def build() -> keras.Model:
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])

    with strategy.scope():
        optimizer = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match="build the model under strategy.scope"):
        Trainer(build(), optimizer, keras.losses.MeanSquaredError(), strategy=strategy)
    with strategy.scope():
        model = build()
    with pytest.raises(ValueError, match="build the optimizer under strategy.scope"):
        Trainer(model, keras.optimizers.SGD(0.1), keras.losses.MeanSquaredError(), strategy=strategy)
    trainer = Trainer(model, optimizer, keras.losses.MeanSquaredError(), strategy=strategy)
    assert all(strategy.extended.variable_created_in_scope(v.value) for v in trainer.model.weights)


def test_launcher_gives_each_worker_its_tf_config_and_stops_the_rest_after_a_failure(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys, time\n"
        "config = json.loads(os.environ['TF_CONFIG'])\n"
        "index = config['task']['index']\n"
        # one write: worker 0's output is not relayed line by line (launch_workers' docstring)
        "sys.stdout.write(json.dumps(config) + '\\n'); sys.stdout.flush()\n"
        "if index == 1:\n"
        "    sys.exit(3)\n"
        "time.sleep(0 if len(sys.argv) < 2 else float(sys.argv[1]))\n"
    )
    launcher = [sys.executable, "-m", "stages.apps.launch_workers"]
    ok = subprocess.run(
        [*launcher, "-n", "3", "--", sys.executable, str(script)],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert ok.returncode == 3, ok.stderr  # worker 1's status
    assert "launch_workers: worker 1 exited with status 3" in ok.stderr  # said even if all ended between polls
    lines = [line.split("{", 1) for line in ok.stdout.splitlines() if "cluster" in line]
    assert sorted(prefix for prefix, _ in lines) == ["", "worker 1: ", "worker 2: "]
    configs = [json.loads("{" + rest) for _, rest in lines]
    assert sorted(c["task"]["index"] for c in configs) == [0, 1, 2]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    assert all(c["cluster"]["worker"] == workers for c in configs)

    started = time.monotonic()
    hung = subprocess.run(  # worker 0 would sleep for 10 minutes: terminated after the grace period
        [*launcher, "-n", "2", "--grace", "1", "--", sys.executable, str(script), "600"],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert hung.returncode == 3, hung.stderr
    assert "worker 1 exited with status 3" in hung.stderr and "terminating" in hung.stderr
    assert time.monotonic() - started < 30


def test_a_stage_without_distribute_refuses_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages that pass no strategy would train alone on every worker, and every one would write."""
    import keras

    from stages.common.cli import StageError
    from stages.common.training import Trainer

    monkeypatch.setenv("TF_CONFIG", tf_configs(free_ports(2))[1])
    with pytest.raises(StageError, match="trains in one process only"):
        Trainer(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]),
            keras.optimizers.SGD(0.1),
            keras.losses.MeanSquaredError(),
        )
