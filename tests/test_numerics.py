"""Same numbers on every machine: a training stage run on two imitated machines writes the same bytes.

One machine is this one as it is (all its cores, every instruction set its CPU
has). The other imitates a smaller, older one: one core (``taskset``) and no
AVX-512 in oneDNN, NumPy, OpenBLAS or OpenCV (each library's own switch). With
the pinned numerics (stages/common/numerics.py) the emotion CNN, trained for a
few epochs on a slice of the sample, must come out byte-identical: metrics,
plots, weights and the exported SavedModel. In the ``fast`` mode the same two
machines must differ, which shows the imitation is real and the test can fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, project_files, run
from stages.common.numerics import PINNED

STAGE = "train_emotion_cnn"
OUTPUTS = ("metrics/emotion_cnn.json", "models/emotion_cnn", "plots/train_emotion_cnn")
# The imitated smaller machine: what each library would see on an AVX2-only CPU.
OLDER_CPU = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENCV_CPU_DISABLE": "AVX512-SKX",
    "OPENBLAS_CORETYPE": "Haswell",
}
SLICE = {"training": 384, "public_test": 64, "private_test": 64}
SHORT = {"max_epochs": 3, "patience": 3, "ig_steps": 4}


def digests(project: Path) -> dict[str, str]:
    found = {}
    for name in OUTPUTS:
        path = project / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[file.relative_to(project).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with TFRecords of a small slice of the FER2013 sample and short training params."""
    files = [f for f in project_files() if f == "params.yaml" or f.startswith("stages/")]
    root = copy_project(tmp_path_factory.mktemp("numerics") / "project", files)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fer2013"]["sample"] |= SLICE
    params[STAGE] |= SHORT
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download_fer2013", "tfrecords_fer2013"):
        run(["python", "-m", f"stages.{stage}"], root)
    return root


def train_on(project: Path, dest: Path, mode: str, older: bool) -> dict[str, str]:
    """Run the stage in a copy of ``project`` as one imitated machine; the digests of its outputs."""
    shutil.copytree(project, dest)
    prefix = ["taskset", "-c", "0"] if older else []
    # This test process pinned its own environment when it imported `stages`; the child must
    # start from the host's view, or `fast` would inherit the pins.
    env: dict[str, str | None] = {key: None for key in PINNED}
    env.update({"EAGER_PIPELINE_NUMERICS": mode, **(OLDER_CPU if older else {})})
    run([*prefix, "python", "-m", f"stages.{STAGE}"], dest, env=env)
    return digests(dest)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux) to imitate a 1-core machine")
def test_two_imitated_machines_give_identical_bytes_and_fast_mode_does_not(faces: Path, tmp_path: Path) -> None:
    this = train_on(faces, tmp_path / "this", "reproducible", older=False)
    older = train_on(faces, tmp_path / "older", "reproducible", older=True)
    assert any(name.startswith("models/emotion_cnn/saved_model/") for name in this)
    differing = sorted(name for name in this.keys() | older.keys() if this.get(name) != older.get(name))
    assert differing == [], f"pinned numerics differ between the imitated machines: {differing}"

    if (os.cpu_count() or 1) < 2:
        pytest.skip("the control needs 2 cores: a 1-core machine cannot imitate another core count")
    fast_this = train_on(faces, tmp_path / "fast_this", "fast", older=False)
    fast_older = train_on(faces, tmp_path / "fast_older", "fast", older=True)
    assert fast_this["models/emotion_cnn/model.weights.h5"] != fast_older["models/emotion_cnn/model.weights.h5"]


def test_an_unknown_numerics_mode_is_one_line(workdir: Path) -> None:
    result = run(["python", "-m", "stages.toy_data"], workdir, check=False, env={"EAGER_PIPELINE_NUMERICS": "quick"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: EAGER_PIPELINE_NUMERICS='quick': must be one of reproducible, fast"
    ]
    assert not (workdir / "data").exists()


def test_orthonormal_columns_is_the_qr_factor_with_a_positive_diagonal() -> None:
    import numpy as np

    from stages.common.numerics import orthonormal_columns

    a = np.random.default_rng(0).standard_normal((144, 48))
    q = orthonormal_columns(a)
    assert q.dtype == np.float64 and q.shape == a.shape
    assert np.abs(q.T @ q - np.eye(48)).max() < 1e-14
    r = q.T @ a  # upper triangular with a positive diagonal: the unique QR
    assert np.abs(np.tril(r, -1)).max() < 1e-12 and (np.diag(r) > 0).all()
    reference, reference_r = np.linalg.qr(a)
    assert np.abs(q - reference * np.sign(np.diag(reference_r))).max() < 1e-12
    assert (
        orthonormal_columns(a).tobytes() == q.tobytes()
        and (a == np.random.default_rng(0).standard_normal(a.shape)).all()
    )
    with pytest.raises(ValueError, match="column 2 is linearly dependent"):
        orthonormal_columns(np.column_stack([a[:, 0], a[:, 1], a[:, 0] + a[:, 1]]))


def test_the_reproducible_orthogonal_initializer_keeps_keras_draw_and_is_orthogonal() -> None:
    import keras
    import numpy as np
    from keras.src.initializers.random_initializers import Orthogonal

    from stages.common import numerics

    numerics.exact_orthogonal()  # the suite's other tests may have seeded (and so replaced it) before
    numerics.exact_orthogonal()  # idempotent
    keras_qr = Orthogonal.__call__.keras_qr
    assert not getattr(keras_qr, "exact", False)
    original = keras_qr(keras.initializers.Orthogonal(seed=7), (48, 144))  # recurrent kernels: (units, 3-4 units)
    exact = np.asarray(keras.initializers.Orthogonal(seed=7)((48, 144)))
    assert exact.dtype == np.float32 and exact.shape == (48, 144)
    assert np.abs(exact @ exact.T - np.eye(48)).max() < 1e-6  # fewer rows than columns: orthonormal rows
    assert 0 < np.abs(exact - np.asarray(original)).max() < 1e-5  # the same Gaussian draw, other rounding
    gru = keras.layers.GRU(8)
    gru.build((None, 5, 3))
    kernel = np.asarray(gru.cell.recurrent_kernel)
    assert np.abs(kernel @ kernel.T - np.eye(8)).max() < 1e-6
