"""download_fer2013 on FER2013 as image folders: both layouts, folder / zip / tar.gz, the carved split, bad files."""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run
from helpers import read_report, snapshot
from stages.datasets import fer2013_images
from stages.datasets.fer2013_csv import EMOTIONS, HEADER, USAGES, read_rows
from test_download_fer2013 import MODULE, OUT_CSV, REPORT, set_params, stage_fails

FOLDERS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SPLIT_FOLDER = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
TEMPORARY = re.compile(r"\.(tmp|old)$|\.tmp\.|^\.fer2013-input\.")


# --- image trees built with OpenCV ---------------------------------------------


def faces(n: int, seed: int, smooth: bool = False) -> np.ndarray:
    """``n`` 48×48 grey faces: random pixels, or (for JPEG) smooth shapes JPEG keeps within a few levels."""
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    out = np.empty((n, 48, 48), dtype=np.uint8)
    y, x = np.mgrid[:48, :48]
    for i in range(n):
        a, b, c = rng.uniform(-2, 2, 3)
        base = 128 + a * (x - 24) + b * (y - 24) + 30 * np.sin(x / 7 + c)
        out[i] = np.clip(cv2.GaussianBlur(base.astype(np.float32), (0, 0), 2), 0, 255).astype(np.uint8)
    return out


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    ok, data = cv2.imencode(path.suffix, image, params)
    assert ok
    path.write_bytes(data.tobytes())


def named_tree(
    root: Path, suffix: str = ".png", per_split: dict[str, int] | None = None, smooth: bool = False
) -> list[tuple[int, np.ndarray, str]]:
    """The ``{train,validation,test}/<emotion>/{Training,PublicTest,PrivateTest}_<n>`` layout; the rows the
    CSV must hold, in its order (split, then the number <n>: 9 before 10, whatever the emotion folder)."""
    per_split = per_split or {"Training": 3, "PublicTest": 1, "PrivateTest": 1}
    rows = []
    for usage, per_class in per_split.items():
        n = 7 * per_class
        images = faces(n, seed=USAGES.index(usage), smooth=smooth)
        numbers = np.random.default_rng(10 + USAGES.index(usage)).permutation(np.arange(5, 5 + n))  # 5 .. 30ish
        entries = []
        for i in range(n):
            label = i % 7
            folder = FOLDERS[label].upper() if label == 3 else FOLDERS[label]  # folder names in any case
            write_image(root / SPLIT_FOLDER[usage] / folder / f"{usage}_{numbers[i]}{suffix}", images[i])
            entries.append((int(numbers[i]), label, images[i], usage))
        rows += [(label, image, usage) for _, label, image, usage in sorted(entries, key=lambda e: e[0])]
    (root / "README.md").write_text("not part of the data\n")  # beside the split folders: ignored
    (root / "train" / "angry" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
    return rows


def unnamed_tree(
    root: Path, train_per_class: tuple[int, ...] = (16, 3, 16, 24, 16, 8, 16), test_per_class: int = 2
) -> dict[str, dict[str, np.ndarray]]:
    """The msambare/fer2013 layout: ``{train,test}/<emotion>/im<k>.png``, no split names; images by relative path."""
    tree: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    for split, counts in (("train", train_per_class), ("test", (test_per_class,) * 7)):
        for label, count in enumerate(counts):
            for k, image in enumerate(faces(count, seed=100 * label + len(split))):
                relative = f"{split}/{FOLDERS[label]}/im{k}.png"
                write_image(root / relative, image)
                tree[split][relative] = image
    return tree


def csv_text(rows: list[tuple[int, np.ndarray, str]]) -> str:
    return HEADER + "".join(f"{label},{' '.join(map(str, image.ravel()))},{usage}\n" for label, image, usage in rows)


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, usage ids, pixels (n, 2304)) of a written CSV, checked by the project's own reader."""
    with path.open(newline="") as f:
        chunks = list(read_rows(f, str(path)))
    assert all(not bad for _, bad in chunks)
    return (
        np.concatenate([c.emotions for c, _ in chunks]),
        np.concatenate([c.usages for c, _ in chunks]),
        np.concatenate([c.pixels for c, _ in chunks]),
    )


def zip_folder(folder: Path, dest: Path, top: str = "") -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}{path.relative_to(folder).as_posix()}")
    return dest


def tar_folder(folder: Path, dest: Path, top: str = "") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, f"{top}{path.relative_to(folder).as_posix()}")
    return dest


def report(workdir: Path) -> dict:
    return read_report(workdir, REPORT)


def leftovers(workdir: Path) -> list[str]:
    return sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*") if TEMPORARY.search(p.name))


# --- the named-split layout ----------------------------------------------------------


@pytest.mark.parametrize("form", ["folder", "zip", "tar.gz"])
def test_named_layout_png_round_trips_exactly_in_split_and_number_order(
    workdir: Path, tmp_path: Path, form: str
) -> None:
    rows = named_tree(tmp_path / "fer")
    source = {
        "folder": lambda: tmp_path / "fer",
        "zip": lambda: zip_folder(tmp_path / "fer", tmp_path / "fer.zip"),
        "tar.gz": lambda: tar_folder(tmp_path / "fer", tmp_path / "fer.tar.gz", top="fer2013/"),
    }[form]()
    set_params(workdir, source="path", path=str(source))
    run(MODULE, workdir)
    assert (workdir / OUT_CSV).read_text() == csv_text(rows)
    r = report(workdir)
    assert (r["form"], r["valid_split"]) == ("image_folders", "from the file names (PublicTest_<n>)")
    assert r["rows_per_split"] == {"Training": 21, "PublicTest": 7, "PrivateTest": 7}
    assert r["rows_per_class"] == dict.fromkeys(EMOTIONS, 5)
    assert r["bad_rows"]["skipped"] == 0 and r["ignored_beside_the_splits"] == ["README.md"]
    folder_digest = fer2013_images.read_faces(tmp_path / "fer", str, "fail", 0, 0.125).images_sha256
    assert r["images_sha256"] == folder_digest  # the same images, however packed
    expected_sha = folder_digest if form == "folder" else hashlib.sha256(source.read_bytes()).hexdigest()
    assert r["source_sha256"] == expected_sha
    assert leftovers(workdir) == []


def test_jpeg_pixels_within_a_few_levels_and_grey_colour_files_are_converted(workdir: Path, tmp_path: Path) -> None:
    rows = named_tree(tmp_path / "fer", suffix=".jpg", smooth=True)
    # One face saved as a colour JPEG of grey content (as some converters do): taken, converted, counted.
    label, image, usage = rows[0]
    colour = next((tmp_path / "fer" / "train").rglob("Training_5.jpg"))
    write_image(colour, cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    set_params(workdir, source="path", path=str(tmp_path / "fer"))
    run(MODULE, workdir)
    labels, usages, pixels = read_csv(workdir / OUT_CSV)
    assert labels.tolist() == [r[0] for r in rows] and usages.tolist() == [USAGES.index(r[2]) for r in rows]
    error = np.abs(pixels.astype(int) - np.stack([r[1].ravel() for r in rows]).astype(int))
    assert error.max() <= 4 and error.mean() < 1.0, (error.max(), error.mean())
    assert report(workdir)["colour_images_converted"] == 1


# --- the train/test layout without split names: the carved validation split -------------


def test_unnamed_layout_carves_a_seeded_stratified_valid_split(workdir: Path, tmp_path: Path) -> None:
    tree = unnamed_tree(tmp_path / "fer")
    set_params(workdir, source="path", path=str(tmp_path / "fer"), valid_fraction=0.25)
    run(MODULE, workdir)
    first = snapshot(workdir)
    r = report(workdir)
    assert (r["valid_split"], r["valid_fraction"]) == ("carved from train, seeded, stratified", 0.25)
    train_counts = (16, 3, 16, 24, 16, 8, 16)
    carved = [int(np.floor(0.25 * n + 0.5)) for n in train_counts]  # per class: 4, 1, 4, 6, 4, 2, 4
    assert list(r["rows_per_split_and_class"]["PublicTest"].values()) == carved
    assert list(r["rows_per_split_and_class"]["Training"].values()) == [
        n - c for n, c in zip(train_counts, carved, strict=True)
    ]
    assert list(r["rows_per_split_and_class"]["PrivateTest"].values()) == [2] * 7

    labels, usages, pixels = read_csv(workdir / OUT_CSV)
    assert usages.tolist() == sorted(usages.tolist())  # Training, PublicTest, PrivateTest
    as_bytes = [p.tobytes() for p in pixels]
    train_images = {image.tobytes() for image in tree["train"].values()}
    assert set(as_bytes[: usages.tolist().index(2)]) == train_images  # Training + PublicTest = the train folder
    assert {b for b, u in zip(as_bytes, usages, strict=True) if u == 2} == {
        image.tobytes() for image in tree["test"].values()
    }
    # Within each split, path order (folders by name), numbers compared as numbers: im2 before im10.
    test_order = [b for b, u in zip(as_bytes, usages, strict=True) if u == 2]
    assert test_order == [tree["test"][f"test/{f}/im{k}.png"].tobytes() for f in sorted(FOLDERS) for k in range(2)]
    angry_train = [b for b, u, label in zip(as_bytes, usages, labels, strict=True) if u == 0 and label == 0]
    order = {tree["train"][f"train/angry/im{k}.png"].tobytes(): k for k in range(16)}
    assert [order[b] for b in angry_train] == sorted(order[b] for b in angry_train)

    run(MODULE, workdir)
    assert snapshot(workdir) == first  # deterministic
    params = (workdir / "params.yaml").read_text()
    (workdir / "params.yaml").write_text(re.sub(r"(?m)^seed: .*$", "seed: 7", params))
    run(MODULE, workdir)
    other = read_csv(workdir / OUT_CSV)
    assert report(workdir)["rows_per_split_and_class"] == r["rows_per_split_and_class"]  # same strata ...
    assert other[2].tobytes() != pixels.tobytes()  # ... other faces chosen


def test_carve_valid_is_stratified_seeded_and_leaves_other_splits() -> None:
    labels = np.repeat(np.arange(7), [40, 8, 40, 80, 40, 24, 40]).astype(np.uint8)
    usages = np.zeros(len(labels), dtype=np.uint8)
    usages[::10] = 2  # some PrivateTest rows: never moved
    a = fer2013_images.carve_valid(labels, usages, 0.125, seed=42)
    assert (a == fer2013_images.carve_valid(labels, usages, 0.125, seed=42)).all()
    assert not (a == fer2013_images.carve_valid(labels, usages, 0.125, seed=43)).all()
    assert (a[usages == 2] == 2).all()
    for label in range(7):
        train = (usages == 0) & (labels == label)
        assert (a[train] == 1).sum() == int(np.floor(0.125 * train.sum() + 0.5))


def test_a_validation_folder_without_split_names_is_publictest(workdir: Path, tmp_path: Path) -> None:
    unnamed_tree(tmp_path / "fer")
    for path in sorted((tmp_path / "fer" / "test").rglob("im0.png")):  # move one image per class to validation/
        target = tmp_path / "fer" / "validation" / path.parent.name / path.name
        target.parent.mkdir(parents=True)
        path.rename(target)
    set_params(workdir, source="path", path=str(tmp_path / "fer"))
    run(MODULE, workdir)
    r = report(workdir)
    assert r["valid_split"] == "from the validation folder" and "valid_fraction" not in r
    assert r["rows_per_split"] == {"Training": 99, "PublicTest": 7, "PrivateTest": 7}


# --- bad files and bad archives -----------------------------------------------------------


def make_bad(root: Path, bad: str) -> Path:
    """Damage an unnamed tree at ``root``; return the file (or folder) the error must name."""
    angry = root / "train" / "angry"
    if bad == "wrong size":
        path = angry / "im3.png"
        write_image(path, np.zeros((48, 47), dtype=np.uint8))
    elif bad == "unreadable file":
        path = angry / "im3.png"
        path.write_bytes(path.read_bytes()[:40])  # cut short
    elif bad == "not an image":
        path = angry / "notes.txt"
        path.write_text("hello\n")
    elif bad == "empty file":  # issue 23: OpenCV raised cv2.error on 0 bytes, and skip could not skip it
        path = angry / "im3.png"
        path.write_bytes(b"")
    elif bad == "no test folder":  # issue 23: accepted with a warning, tfrecords_fer2013 failed later
        path = root / "test"
        shutil.rmtree(path)
    elif bad == "colour image":
        path = angry / "im3.png"
        write_image(path, np.dstack([np.full((48, 48), v, np.uint8) for v in (0, 128, 255)]))
    elif bad == "unknown folder":
        path = root / "train" / "contempt" / "im0.png"
        write_image(path, faces(1, 0)[0])
    elif bad == "outside emotion folder":
        path = root / "train" / "im0.png"
        write_image(path, faces(1, 0)[0])
    elif bad == "nested folder":
        path = angry / "more" / "im0.png"
        write_image(path, faces(1, 0)[0])
    elif bad == "empty split folder":
        path = root / "test"
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
    else:
        raise ValueError(bad)
    return path


BAD = {  # damage -> (reason counted with skip, what the error line says)
    "wrong size": ("wrong_size", "47x48 pixels, expected 48x48"),
    "unreadable file": ("unreadable_image", "not an image OpenCV can read"),
    "not an image": ("unreadable_image", "not an image OpenCV can read"),
    "empty file": ("unreadable_image", "an empty file (0 bytes)"),
    "no test folder": (None, "no such folder (the PrivateTest images)"),
    "colour image": ("not_grey", "a colour image"),
    "unknown folder": ("unknown_folder", "unknown emotion folder 'contempt'"),
    "outside emotion folder": ("outside_emotion_folder", "not in an emotion folder"),
    "nested folder": ("outside_emotion_folder", "in a subfolder of train/angry/"),
    "empty split folder": (None, "no image files in this split folder"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_bad_file_is_one_line_naming_it_and_keeps_the_outputs(workdir: Path, tmp_path: Path, bad: str) -> None:
    unnamed_tree(tmp_path / "fer")
    set_params(workdir, source="path", path=str(tmp_path / "fer"))
    run(MODULE, workdir)
    before = snapshot(workdir)
    named = make_bad(tmp_path / "fer", bad)
    reason, message = BAD[bad]
    error = stage_fails(workdir)
    assert error.startswith(f"error: {named}: {message}"), error
    assert snapshot(workdir) == before and leftovers(workdir) == []
    if reason is None:
        return
    set_params(workdir, source="path", path=str(tmp_path / "fer"), on_bad_row="skip")
    run(MODULE, workdir)
    r = report(workdir)
    assert r["bad_rows"]["found"][reason] == 1 and r["bad_rows"]["skipped"] == 1
    assert r["bad_rows"]["examples"][0].startswith(f"{named}: {message}")
    assert r["rows"] == sum((16, 3, 16, 24, 16, 8, 16)) + 14 - (
        bad in ("wrong size", "unreadable file", "colour image", "empty file")
    )


def test_a_bad_member_of_an_archive_is_named_by_archive_and_member(workdir: Path, tmp_path: Path) -> None:
    unnamed_tree(tmp_path / "fer")
    make_bad(tmp_path / "fer", "wrong size")
    archive = zip_folder(tmp_path / "fer", tmp_path / "fer.zip", top="fer2013/")
    set_params(workdir, source="path", path=str(archive))
    error = stage_fails(workdir)
    assert error.startswith(f"error: {archive}: member fer2013/train/angry/im3.png: 47x48 pixels"), error
    assert leftovers(workdir) == [] and not (workdir / "data/raw/fer2013").exists()


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_corrupt_zip_of_images_is_named_and_keeps_the_outputs(workdir: Path, tmp_path: Path, damage: str) -> None:
    unnamed_tree(tmp_path / "fer")
    archive = zip_folder(tmp_path / "fer", tmp_path / "fer.zip")
    set_params(workdir, source="path", path=str(archive))
    run(MODULE, workdir)
    before = snapshot(workdir)
    data = bytearray(archive.read_bytes())
    if damage == "cut":
        del data[-30:]
    else:
        data[len(data) // 3] ^= 0x10  # inside a deflated member: its CRC no longer matches
    archive.write_bytes(bytes(data))
    error = stage_fails(workdir)
    assert error.startswith(f"error: {archive}: ") and "corrupt" in error, error
    assert snapshot(workdir) == before and leftovers(workdir) == []


def test_a_folder_without_image_folders_is_one_line(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    set_params(workdir, source="path", path=str(tmp_path / "empty"))
    error = stage_fails(workdir)
    assert error.startswith(f"error: {tmp_path / 'empty'}: is a folder, but holds no FER2013 image folders")
    archive = zip_folder(tmp_path / "empty", tmp_path / "nothing.zip")
    zipfile.ZipFile(archive, "a").writestr("photos/cat.jpg", b"\xff\xd8not really")
    set_params(workdir, source="path", path=str(archive))
    assert stage_fails(workdir).startswith(f"error: {archive}: no FER2013 image folders inside")
    assert not (workdir / "data/raw/fer2013").exists() and leftovers(workdir) == []


def test_kaggle_dataset_without_credentials_is_one_line(workdir: Path, tmp_path: Path) -> None:
    # Not downloadable here: only the missing-package / missing-credentials line can be checked.
    set_params(workdir, source="kaggle", kaggle_dataset="msambare/fer2013")
    env = {
        "HOME": str(tmp_path / "home"),
        "KAGGLE_USERNAME": "",
        "KAGGLE_KEY": "",
        "KAGGLE_API_TOKEN": "",
        "KAGGLE_CONFIG_DIR": str(tmp_path / "none"),
    }
    result = run(MODULE, workdir, check=False, env=env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: fer2013.source: kaggle"), result.stderr
    set_params(workdir, source="kaggle", kaggle_dataset="not a dataset name")
    assert "fer2013.kaggle_dataset" in stage_fails(workdir)


def test_a_mirror_of_a_zip_of_images_is_read_through_source_url(workdir: Path, tmp_path: Path, http_server) -> None:
    rows = named_tree(tmp_path / "fer")
    data = zip_folder(tmp_path / "fer", tmp_path / "fer.zip").read_bytes()
    http_server.files["mirror/fer2013-images.zip"] = data
    sha = hashlib.sha256(data).hexdigest()
    set_params(workdir, source="url", url=http_server.url("mirror/fer2013-images.zip"), sha256=sha)
    run(MODULE, workdir)
    assert (workdir / OUT_CSV).read_text() == csv_text(rows)
    assert (report(workdir)["form"], report(workdir)["source_sha256"]) == ("image_folders", sha)
