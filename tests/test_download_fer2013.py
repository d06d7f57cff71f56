"""Stage download_fer2013: every form of the real file, every kind of bad row, the sources, the sample faces."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from conftest import run, stage_env
from stages import download_fer2013 as stage
from stages.common.cli import StageError
from stages.datasets.fer2013_csv import EMOTIONS, FER2013_CLASS_COUNTS, HEADER, PIXELS, USAGES, read_rows
from stages.samples.fer2013 import draw_faces, iter_sample_rows, split_labels

MODULE = ["python", "-m", "stages.download_fer2013"]
OUT_CSV = Path("data/raw/fer2013/fer2013.csv")
REPORT = Path("metrics/data_fer2013.json")


# --- small files in each form ------------------------------------------------


def make_rows(n: int = 21, seed: int = 0) -> list[tuple[int, str, str]]:
    """``n`` rows (emotion, pixels, Usage): every class, all three splits, random pixels."""
    rng = np.random.default_rng(seed)
    usages = [USAGES[0]] * (n - 2 * (n // 5)) + [USAGES[1]] * (n // 5) + [USAGES[2]] * (n // 5)
    return [(i % 7, " ".join(map(str, rng.integers(0, 256, PIXELS))), usages[i]) for i in range(n)]


def fer_csv(rows: list[tuple[int, str, str]]) -> str:
    return HEADER + "".join(f"{e},{p},{u}\n" for e, p, u in rows)


def icml_csv(rows: list[tuple[int, str, str]]) -> str:
    """icml_face_data.csv: columns emotion, Usage, pixels; spaces after the header's commas."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    for e, p, u in rows:
        writer.writerow([e, u, p])
    return "emotion, Usage, pixels\n" + buffer.getvalue()


def tar_gz(dest: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def zip_file(dest: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


def write_form(form: str, folder: Path, rows: list[tuple[int, str, str]]) -> Path:
    """The rows as one of the forms a user may have."""
    text = fer_csv(rows).encode()

    def tarball() -> Path:
        return tar_gz(folder / "fer2013.tar.gz", {"fer2013/README": b"readme\n", "fer2013/fer2013.csv": text})

    train = b"emotion,pixels\n" + b"".join(f"{e},{p}\n".encode() for e, p, u in rows if u == "Training")
    if form == "csv":
        path = folder / "fer2013.csv"
        path.write_bytes(text)
        return path
    if form == "csv saved by Excel":  # byte-order mark, Windows line ends
        path = folder / "fer2013.csv"
        path.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
        return path
    if form == "tar.gz":
        return tarball()
    if form == "icml":
        path = folder / "icml_face_data.csv"
        path.write_text(icml_csv(rows))
        return path
    if form == "competition zip":  # its real layout: the CSV is icml_face_data.csv
        return zip_file(
            folder / "competition.zip",
            {
                "example_submission.csv": b"Id,Emotion\n",
                "train.csv": train,
                "test.csv": b"pixels\n",
                "icml_face_data.csv": icml_csv(rows).encode(),
                "fer2013.tar.gz": tarball().read_bytes(),
            },
        )
    if form == "zip with only the tarball":
        return zip_file(folder / "only_tar.zip", {"train.csv": train, "fer2013.tar.gz": tarball().read_bytes()})
    raise ValueError(form)


def set_params(workdir: Path, **fer2013: object) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    base = params["fer2013"]  # params.yaml holds every default: the keys not given keep its values
    params["fer2013"] = {**base, **{k: {**base[k], **v} if isinstance(v, dict) else v for k, v in fer2013.items()}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage_fails(workdir: Path) -> str:
    """Run the stage expecting a user error; return its one-line message."""
    result = run(MODULE, workdir, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- every form gives the same normalized file ---------------------------------


FORMS = ["csv", "csv saved by Excel", "tar.gz", "competition zip", "zip with only the tarball", "icml"]


@pytest.mark.parametrize("form", FORMS)
def test_each_form_gives_the_same_normalized_csv_and_report(workdir: Path, tmp_path: Path, form: str) -> None:
    rows = make_rows()
    source = write_form(form, tmp_path, rows)
    set_params(workdir, source="path", path=str(source))
    run(MODULE, workdir)
    assert (workdir / OUT_CSV).read_text() == fer_csv(rows)  # canonical form, original order
    report = json.loads((workdir / REPORT).read_text())
    assert report["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert report["rows"] == 21
    assert report["rows_per_split"] == {"Training": 13, "PublicTest": 4, "PrivateTest": 4}
    assert report["rows_per_class"] == dict.fromkeys(EMOTIONS, 3)
    assert sum(report["rows_per_split_and_class"]["PublicTest"].values()) == 4
    assert report["bad_rows"]["skipped"] == 0
    assert 120 < report["pixels"]["mean"] < 135  # uniform 0-255


def test_the_url_source_downloads_a_mirror(workdir: Path, tmp_path: Path, http_server) -> None:
    archive = write_form("tar.gz", tmp_path, make_rows()).read_bytes()
    http_server.files["mirror/fer2013.tar.gz"] = archive
    sha = hashlib.sha256(archive).hexdigest()
    set_params(workdir, source="url", url=http_server.url("mirror/fer2013.tar.gz"), sha256=sha)
    run(MODULE, workdir)
    assert (workdir / OUT_CSV).read_text() == fer_csv(make_rows())
    report = json.loads((workdir / REPORT).read_text())
    assert (report["source"], report["source_sha256"]) == ("url", sha)


# --- bad rows ------------------------------------------------------------------


def pixels_with(*values: str) -> str:
    return " ".join([*values, *["7"] * (PIXELS - len(values))])


GOOD = pixels_with()
BAD_ROWS = {  # reason -> (line as written, the message expected for it)
    "wrong_pixel_count": (f"0,{' '.join(['1'] * 2303)},Training", "expected 2304 pixels, got 2303"),
    "non_integer_pixel": (f"0,{pixels_with('1', '2.5')},Training", "pixel 2 is not an integer: '2.5'"),
    "pixel_out_of_range": (f"0,{pixels_with('256')},Training", "pixel 1 is out of range 0-255: 256"),
    "unknown_emotion": (f"7,{GOOD},Training", "unknown emotion '7' (expected 0-6)"),
    "unknown_usage": (f"0,{GOOD},Validation", "unknown Usage 'Validation'"),
    "empty_line": ("", "empty line"),
    "missing_columns": (f"0,{GOOD}", "expected 3 columns, got 2"),
}


def with_bad_rows(lines: list[str]) -> str:
    """A valid file with ``lines`` inserted after its third row (so the first bad line is 5)."""
    good = fer_csv(make_rows(7)).splitlines()
    return "\n".join(good[:4] + lines + good[4:]) + "\n"


@pytest.mark.parametrize("reason", sorted(BAD_ROWS) + ["negative pixel"])
def test_a_bad_row_is_found_with_its_line_number(tmp_path: Path, reason: str) -> None:
    line, message = BAD_ROWS.get(reason, (f"0,{pixels_with('5', '-1')},Training", "pixel 2 is out of range 0-255: -1"))
    source = tmp_path / "fer2013.csv"
    source.write_text(with_bad_rows([line]))
    with pytest.raises(StageError) as error:
        stage.normalize(source, "fer2013.csv", tmp_path / "out.csv", "fail")
    assert str(error.value).startswith(f"fer2013.csv: line 5: {message}")


def test_on_bad_row_fail_stops_with_one_line_and_writes_nothing(workdir: Path, tmp_path: Path) -> None:
    source = tmp_path / "fer2013.csv"
    source.write_text(with_bad_rows([BAD_ROWS["wrong_pixel_count"][0]]))
    set_params(workdir, source="path", path=str(source))
    message = stage_fails(workdir)
    assert f"{source}: line 5: expected 2304 pixels, got 2303" in message
    assert not (workdir / "data/raw/fer2013").exists() and not (workdir / REPORT).exists()


def test_on_bad_row_skip_drops_and_counts_every_kind(workdir: Path, tmp_path: Path) -> None:
    bad = [line for line, _ in BAD_ROWS.values()] + [f"1,{pixels_with('-1')},PublicTest"]
    source = tmp_path / "fer2013.csv"
    source.write_text(with_bad_rows(bad))
    set_params(workdir, source="path", path=str(source), on_bad_row="skip")
    run(MODULE, workdir)
    assert (workdir / OUT_CSV).read_text() == fer_csv(make_rows(7))
    report = json.loads((workdir / REPORT).read_text())
    expected = dict.fromkeys(BAD_ROWS, 1) | {"pixel_out_of_range": 2}
    assert report["bad_rows"]["found"] == {k: expected[k] for k in report["bad_rows"]["found"]}
    assert report["bad_rows"]["skipped"] == 8 and report["rows"] == 7
    assert report["bad_rows"]["examples"][0] == f"{source}: line 5: expected 2304 pixels, got 2303"


def test_a_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "train.csv"
    source.write_text("emotion,pixels\n0,1 2 3\n")
    with pytest.raises(StageError, match=r"train.csv: line 1: missing column\(s\) Usage"):
        stage.normalize(source, "train.csv", tmp_path / "out.csv", "fail")


def test_a_truncated_tarball_is_a_clear_error(tmp_path: Path) -> None:
    archive = write_form("tar.gz", tmp_path, make_rows(40))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(StageError, match="truncated or corrupt"):
        stage.normalize(archive, "fer2013.tar.gz", tmp_path / "out.csv", "fail")


def test_an_archive_member_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "evil.tar.gz", {"../fer2013.csv": fer_csv(make_rows(7)).encode()})
    with pytest.raises(StageError, match="refusing member '../fer2013.csv'"):
        stage.normalize(archive, "evil.tar.gz", tmp_path / "out.csv", "fail")


# --- kaggle and url params --------------------------------------------------------


def test_kaggle_without_the_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StageError, match=r"pip install '\.\[kaggle\]'.*source: path"):
        stage.fetch_kaggle()


def test_kaggle_without_credentials_says_where_to_put_them(workdir: Path, tmp_path: Path) -> None:
    # A stand-in package that must not even be imported without credentials.
    fake = tmp_path / "fake_site" / "kaggle"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('kaggle imported before the credential check')\n")
    set_params(workdir, source="kaggle")
    env = stage_env()
    env = {k: v for k, v in env.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=f"{env['PYTHONPATH']}{os.pathsep}{fake.parent}")
    result = subprocess.run(MODULE, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: fer2013.source: kaggle: no Kaggle API credentials")
    assert "~/.kaggle/" in result.stderr and "source: path" in result.stderr


def test_url_without_sha256_is_a_params_error(workdir: Path) -> None:
    set_params(workdir, source="url", url="https://example.invalid/fer2013.tar.gz")
    message = stage_fails(workdir)
    assert (
        message == "error: params.yaml: fer2013: sha256: required with source: url (the checksum of the mirror's file)"
    )


# --- the embedded sample --------------------------------------------------------------


def test_sample_splits_follow_fer2013_class_balance() -> None:
    labels, usages = split_labels({"Training": 3000, "PublicTest": 400, "PrivateTest": 400}, np.random.default_rng(0))
    assert np.bincount(usages).tolist() == [3000, 400, 400]
    assert usages.tolist() == sorted(usages.tolist())  # Training, then PublicTest, then PrivateTest
    share = np.asarray(FER2013_CLASS_COUNTS) / sum(FER2013_CLASS_COUNTS)
    for usage in range(3):
        counts = np.bincount(labels[usages == usage], minlength=7)
        assert np.abs(counts - share * counts.sum()).max() <= 1
        assert counts.argmin() == EMOTIONS.index("Disgust")


def test_sample_is_byte_deterministic_and_valid() -> None:
    rows = {"Training": 30, "PublicTest": 7, "PrivateTest": 7}
    text = b"".join(iter_sample_rows(rows, seed=5))
    assert text == b"".join(iter_sample_rows(rows, seed=5))
    assert text != b"".join(iter_sample_rows(rows, seed=6))
    chunks = list(read_rows(io.StringIO(text.decode(), newline=""), "sample"))
    assert all(not bad for _, bad in chunks)
    pixels = np.concatenate([chunk.pixels for chunk, _ in chunks])
    assert pixels.shape == (44, PIXELS) and pixels.dtype == np.uint8
    assert pixels.std(axis=1).min() > 5  # a picture, not a flat square


@pytest.mark.slow
def test_sample_expressions_are_learnable_but_not_trivial() -> None:
    labels = np.resize(np.arange(7), 700).astype(np.uint8)
    faces = draw_faces(labels, np.random.default_rng(1))
    hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)  # edge directions: shapes, not lighting
    features = np.stack([hog.compute(face) for face in faces])
    model = LogisticRegression(max_iter=500, C=0.1).fit(features[:490], labels[:490])
    accuracy = (model.predict(features[490:]) == labels[490:]).mean()
    assert 0.3 < accuracy < 0.95, accuracy  # chance is 1/7


def test_stage_on_the_sample_writes_the_generated_file(workdir: Path) -> None:
    sizes = {"training": 40, "public_test": 8, "private_test": 8}
    set_params(workdir, source="sample", sample=sizes)
    run(MODULE, workdir)
    seed = yaml.safe_load((workdir / "params.yaml").read_text())["seed"]
    expected = b"".join(iter_sample_rows({"Training": 40, "PublicTest": 8, "PrivateTest": 8}, seed))
    assert (workdir / OUT_CSV).read_bytes() == expected
    report = json.loads((workdir / REPORT).read_text())
    assert report["source"] == "sample" and report["rows"] == 56
    assert report["source_sha256"] == hashlib.sha256(expected).hexdigest()
    assert not list((workdir / "data/raw").glob(".*"))  # no scratch files left behind
