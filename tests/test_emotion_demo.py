"""The emotion demo command (``python -m stages.apps.emotion_demo``): a synthetic video, one image, the error lines.

Faces are drawn by the FER2013 sample generator (stages/samples/fer2013.py),
scaled up so OpenCV's Haar cascade finds them; the model is the export of the
stage run in the session fixture ``emotion_cnn_project``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run, stage_env
from stages.apps.emotion_demo import detect_faces, face_detector
from stages.samples.fer2013 import draw_faces

FRAMES, FPS, SIZE = 12, 10.0, (320, 240)
NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")


def face_frames(n: int) -> list[np.ndarray]:
    """``n`` BGR frames, each a drawn face (the seven expressions in turn) scaled 4× and sliding right."""
    faces = draw_faces(np.arange(n, dtype=np.uint8) % 7, np.random.default_rng(11))
    frames = []
    for i, face in enumerate(faces):
        frame = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
        frame[24:216, 10 + 4 * i : 202 + 4 * i] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)[..., None]
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)  # type: ignore[attr-defined]
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def demo(args: list[str], cwd: Path, check: bool = True):
    return run([sys.executable, "-m", "stages.apps.emotion_demo", *args], cwd, check=check)


def test_the_haar_cascade_finds_the_drawn_faces() -> None:
    detector = face_detector()
    found = [detect_faces(detector, cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)) for f in face_frames(FRAMES)]
    assert sum(len(boxes) == 1 for boxes in found) >= FRAMES - 2
    for boxes, i in zip(found, range(FRAMES), strict=True):
        for x, _y, w, _h in boxes:  # the box lies on the drawn face
            assert 10 + 4 * i - 20 <= x and x + w <= 202 + 4 * i + 20 and w >= 96


def test_demo_writes_an_annotated_video_of_the_same_length(emotion_cnn_project: Path, tmp_path: Path) -> None:
    frames = face_frames(FRAMES)
    source = write_video(tmp_path / "in.mp4", frames)
    result = demo(["--video", str(source), "--out", str(tmp_path / "out.mp4")], emotion_cnn_project)
    written, fps = read_video(tmp_path / "out.mp4")
    original, _ = read_video(source)
    assert len(written) == len(original) == FRAMES
    assert fps == pytest.approx(FPS) and written[0].shape == (SIZE[1], SIZE[0], 3)
    # Annotations: the green face box (0, 200, 0) and the orange bars appear on the frames with faces.
    boxed = [((f[..., 1] > 150) & (f[..., 0] < 80) & (f[..., 2] < 80)).sum() > 200 for f in written]
    assert sum(boxed) >= FRAMES - 2
    assert not any(((f[..., 1] > 150) & (f[..., 0] < 80) & (f[..., 2] < 80)).sum() for f in original)
    assert f"{FRAMES} frames" in result.stderr and not list(tmp_path.glob(".out.mp4.*"))

    # --max-frames stops early; .avi works too.
    demo(["--video", str(source), "--out", str(tmp_path / "short.avi"), "--max-frames", "5"], emotion_cnn_project)
    assert len(read_video(tmp_path / "short.avi")[0]) == 5


def test_image_mode_prints_the_seven_probabilities(emotion_cnn_project: Path, tmp_path: Path) -> None:
    face = draw_faces(np.array([3], np.uint8), np.random.default_rng(2))[0]
    cv2.imwrite(str(tmp_path / "crop.png"), face)
    cv2.imwrite(str(tmp_path / "frame.png"), face_frames(1)[0])
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((100, 120), 128, np.uint8))
    for name, where in (
        ("crop.png", "48×48 face crop"),
        ("frame.png", "face(s) found at"),
        ("blank.png", "no face found: the whole image"),
    ):
        lines = demo(["--image", str(tmp_path / name)], emotion_cnn_project).stdout.strip().splitlines()
        assert where in lines[0], lines
        table = [line.split("\t") for line in lines[1:]]
        assert [n for n, _ in table] == list(NAMES)
        assert sum(float(p) for _, p in table) == pytest.approx(1.0, abs=5e-4)


@pytest.mark.parametrize(
    "case", ["no model", "no video", "not a video", "no camera", "bad image", "bad extension", "no display"]
)
def test_demo_errors_are_one_line(emotion_cnn_project: Path, tmp_path: Path, case: str) -> None:
    (tmp_path / "junk.mp4").write_text("not a video\n")
    (tmp_path / "junk.png").write_text("not an image\n")
    video = write_video(tmp_path / "in.mp4", face_frames(2))
    args, expected = {
        "no model": (
            ["--video", str(video), "--out", str(tmp_path / "o.mp4"), "--model", str(tmp_path / "none")],
            f"error: {tmp_path / 'none'}: no exported model here",
        ),
        "no video": (
            ["--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o.mp4")],
            f"error: {tmp_path / 'missing.mp4'}: no such file",
        ),
        "not a video": (
            ["--video", str(tmp_path / "junk.mp4"), "--out", str(tmp_path / "o.mp4")],
            f"error: {tmp_path / 'junk.mp4'}: cannot read this video",
        ),
        "no camera": (["--camera", "97", "--out", str(tmp_path / "o.mp4")], "error: camera 97: cannot be opened"),
        "bad image": (
            ["--image", str(tmp_path / "junk.png")],
            f"error: {tmp_path / 'junk.png'}: cannot read this image",
        ),
        "bad extension": (
            ["--video", str(video), "--out", str(tmp_path / "o.txt")],
            f"error: --out {tmp_path / 'o.txt'}: use a .mp4 or .avi file name",
        ),
        "no display": (["--video", str(video)], "error: cannot open a window (no display)"),
    }[case]
    # Headless, whatever the machine running the tests has: no window may open.
    env = {k: v for k, v in stage_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run(
        [sys.executable, "-m", "stages.apps.emotion_demo", *args],
        cwd=emotion_cnn_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr and "[ WARN" not in result.stderr  # OpenCV's own warnings
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))


def test_a_huge_image_is_searched_shrunk_and_boxes_map_back_to_full_resolution() -> None:
    face = draw_faces(np.array([3], np.uint8), np.random.default_rng(11))[0]
    gray = np.full((8000, 8000), 90, np.uint8)
    gray[2000:4400, 3000:5400] = cv2.resize(face, (2400, 2400), interpolation=cv2.INTER_CUBIC)
    start = time.monotonic()
    boxes = detect_faces(face_detector(), gray)
    assert time.monotonic() - start < 10  # 93 s searched at full size
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert 3000 - 200 <= x and x + w <= 5400 + 200 and 2000 - 200 <= y and y + h <= 4400 + 200 and w >= 1200
