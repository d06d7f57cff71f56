"""Emotion demo (tutorial 07's webcam demo): faces in a camera, a video or an image, classified live.

Not a DVC stage: a command for people, run after ``dvc repro train_emotion_cnn``::

    python -m stages.apps.emotion_demo --camera 0                  # window; q quits
    python -m stages.apps.emotion_demo --video in.mp4              # window; q quits
    python -m stages.apps.emotion_demo --video in.mp4 --out out.mp4   # annotated copy (headless)
    python -m stages.apps.emotion_demo --camera 0 --out rec.mp4 --max-frames 300
    python -m stages.apps.emotion_demo --image face.png            # prints the seven probabilities

Each frame: OpenCV's Haar cascade (``haarcascade_frontalface_default.xml``,
shipped with opencv-python 4.x) finds the faces in the grayscale frame; each
face is cropped, resized to 48×48 and classified by the *exported* model
(``models/emotion_cnn/saved_model``, loaded with ``tf.saved_model.load``: no
code of this project, the model takes raw uint8 pixels and carries its class
names). Each face gets a box, its top emotion and a bar per emotion.

``--out`` writes a video with the input's frame count, frame rate and size
(``.mp4``: mp4v, ``.avi``: MJPG), atomically: a failed run leaves no file.
Problems the user can fix (no camera, an unreadable video or image, no model,
no window on a headless machine) end with one line ``error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# libav's own messages ("moov atom not found") would precede our one-line error; set before cv2 loads it.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2
import numpy as np

from stages.common.cli import StageError, run_stage
from stages.datasets.fer2013_csv import SIDE  # the model's input: 48×48 grey faces

log = logging.getLogger("stages.apps.emotion_demo")

DEFAULT_MODEL = Path("models/emotion_cnn/saved_model")
CASCADE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 1280  # larger frames are shrunk for the cascade: its time grows with the pixels (8000² took 93 s)
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
WINDOW = "emotion_demo (q quits)"
BOX = (0, 200, 0)  # BGR
BAR = (0, 160, 255)
TEXT = (255, 255, 255)
PANEL = (40, 40, 40)


# --- model and faces -------------------------------------------------------------------------------


class EmotionModel:
    """The exported SavedModel: uint8 faces (n, 48, 48) -> probabilities (n, 7), and its class names."""

    def __init__(self, path: Path) -> None:
        if not (Path(path) / "saved_model.pb").is_file():
            raise StageError(f"{path}: no exported model here (run `dvc repro train_emotion_cnn`, or pass --model)")
        import tensorflow as tf

        try:
            self._model = tf.saved_model.load(str(path))
            self.class_names = [n.decode() for n in self._model.class_names().numpy()]
        except (OSError, ValueError, AttributeError, tf.errors.OpError) as exc:
            raise StageError(f"{path}: not an emotion_cnn export: {str(exc).splitlines()[0]}") from None

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        if len(faces) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        pixels = np.asarray(faces, np.uint8)[..., None]
        return self._model.serve(pixels)["probabilities"].numpy()


def face_detector() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, CASCADE)  # type: ignore[attr-defined]  # not in cv2's type stubs
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise StageError(f"{path}: cannot load OpenCV's Haar cascade (opencv-python 4.x ships it; 5.x does not)")
    return detector


def detect_faces(detector: cv2.CascadeClassifier, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in ``gray``'s full-resolution coordinates, left to right.

    A frame larger than ``DETECT_MAX_SIDE`` is searched at a reduced size and
    the boxes scaled back; frames up to that size are searched as they are.
    """
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape[:2]))
    if scale < 1.0:
        small = cv2.resize(
            gray,
            (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
            interpolation=cv2.INTER_AREA,
        )
        min_side = max(24, round(SIDE * scale))  # the cascade's own window is 24×24
        boxes = detector.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        height, width = gray.shape[:2]
        full = []
        for x, y, w, h in boxes:
            x0, y0 = int(round(x / scale)), int(round(y / scale))
            full.append((x0, y0, min(int(round(w / scale)), width - x0), min(int(round(h / scale)), height - y0)))
        return sorted(full)
    boxes = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(SIDE, SIDE))
    return sorted((int(x), int(y), int(w), int(h)) for x, y, w, h in boxes)


def crop(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face in ``box``, resized to 48×48 (area averaging when shrinking)."""
    x, y, w, h = box
    face = gray[y : y + h, x : x + w]
    shrink = face.shape[0] > SIDE
    return cv2.resize(face, (SIDE, SIDE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


# --- drawing -------------------------------------------------------------------------------------


def annotate(
    frame: np.ndarray, box: tuple[int, int, int, int], probabilities: np.ndarray, names: Sequence[str]
) -> None:
    """Draw the face box, its top emotion and one bar per emotion (beside the box, inside the frame)."""
    x, y, w, h = box
    height, width = frame.shape[:2]
    top = int(np.argmax(probabilities))
    cv2.rectangle(frame, (x, y), (x + w, y + h), BOX, 2)
    label = f"{names[top]} {probabilities[top]:.0%}"
    cv2.putText(frame, label, (x, max(y - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX, 1, cv2.LINE_AA)

    row, name_w, bar_w = 13, 62, 60
    panel_w = name_w + bar_w
    left = x + w + 6 if x + w + 6 + panel_w <= width else max(x - 6 - panel_w, 0)
    top_y = min(max(y, 0), max(height - row * len(names), 0))
    cv2.rectangle(frame, (left, top_y), (left + panel_w, top_y + row * len(names)), PANEL, -1)
    for i, (name, p) in enumerate(zip(names, probabilities, strict=True)):
        y0 = top_y + i * row
        cv2.putText(frame, name, (left, y0 + row - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35, TEXT, 1, cv2.LINE_AA)
        cv2.rectangle(frame, (left + name_w, y0 + 2), (left + name_w + bar_w, y0 + row - 2), TEXT, 1)
        filled = int(round(float(p) * bar_w))
        if filled > 0:
            cv2.rectangle(frame, (left + name_w, y0 + 2), (left + name_w + filled, y0 + row - 2), BAR, -1)


def process_frame(frame: np.ndarray, detector, model: EmotionModel) -> int:
    """Detect, classify and draw every face of ``frame`` in place; the number of faces."""
    gray = to_gray(frame)
    boxes = detect_faces(detector, gray)
    probabilities = model.probabilities(np.array([crop(gray, b) for b in boxes]).reshape(-1, SIDE, SIDE))
    for box, p in zip(boxes, probabilities, strict=True):
        annotate(frame, box, p, model.class_names)
    return len(boxes)


# --- sources and sinks ---------------------------------------------------------------------------


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's warnings while probing cameras and files: we report the failure in one line instead."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def open_capture(camera: int | None, video: Path | None) -> cv2.VideoCapture:
    with quiet_opencv():
        if video is not None:
            capture = cv2.VideoCapture(str(video))
        else:
            assert camera is not None  # main passes --camera when there is no --video (or --image)
            capture = cv2.VideoCapture(camera)
    if video is not None:
        if not capture.isOpened():
            raise StageError(f"{video}: cannot read this video (not a video file, or a codec OpenCV lacks)")
        return capture
    if not capture.isOpened():
        raise StageError(f"camera {camera}: cannot be opened (no such camera, or it is in use)")
    return capture


@contextmanager
def atomic_video(path: Path, fps: float, size: tuple[int, int]) -> Iterator[cv2.VideoWriter]:
    """A VideoWriter on a temporary sibling of ``path``, renamed into place only on success.

    (stages.common.outputs names its temporary files ``*.tmp``; OpenCV picks
    the container from the file's extension, so this one keeps it.)
    """
    codec = CODECS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # cv2.VideoWriter_fourcc is missing from opencv-python's type stubs.
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, size)  # type: ignore[attr-defined]
    try:
        if not writer.isOpened():
            raise StageError(f"--out {path}: OpenCV cannot write {codec} video here")
        yield writer
        writer.release()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)


def run_video(
    capture: cv2.VideoCapture,
    source: str,
    detector,
    model: EmotionModel,
    out: Path | None,
    max_frames: int | None,
    live: bool,
) -> None:
    """Annotate every frame; write them to ``out``, or show them in a window until q or the end."""
    ok, frame = capture.read()
    if not ok:
        raise StageError(f"{source}: no frame could be read")
    height, width = frame.shape[:2]
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and 0 < fps < 1000 else 25.0  # cameras often report 0
    frames = faces = 0

    def loop(show) -> None:
        nonlocal ok, frame, frames, faces
        while ok and (max_frames is None or frames < max_frames):
            faces += process_frame(frame, detector, model)
            frames += 1
            if show(frame) is False:
                break
            ok, frame = capture.read()

    if out is not None:
        with atomic_video(out, fps, (width, height)) as writer:
            try:
                loop(writer.write)
            except KeyboardInterrupt:
                if not live:
                    raise
                log.info("interrupted: keeping the %d frames recorded", frames)  # a camera never ends
        log.info("%s -> %s: %d frames, %d faces (%.1f fps, %dx%d)", source, out, frames, faces, fps, width, height)
        return

    def show(image: np.ndarray) -> bool:
        cv2.imshow(WINDOW, image)
        return cv2.waitKey(1) & 0xFF != ord("q")

    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:  # opencv-python-headless has no GUI
        raise StageError(NO_WINDOW) from None
    try:
        loop(show)
    finally:
        cv2.destroyAllWindows()
    log.info("%s: %d frames shown, %d faces", source, frames, faces)


def read_gray(path: Path) -> np.ndarray:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise StageError(f"{path}: cannot read this image (not an image format OpenCV reads)")
    return gray


def run_image(path: Path, gray: np.ndarray, detector, model: EmotionModel) -> None:
    """Print where the face came from, then one ``name probability`` line per emotion."""
    if gray.shape == (SIDE, SIDE):
        face, where = gray, "a 48×48 face crop: classified as it is"
    else:
        boxes = detect_faces(detector, gray)
        if boxes:
            box = max(boxes, key=lambda b: b[2] * b[3])
            face, where = (
                crop(gray, box),
                f"largest of {len(boxes)} face(s) found at x={box[0]} y={box[1]} w={box[2]} h={box[3]}",
            )
        else:
            face, where = (
                crop(gray, (0, 0, gray.shape[1], gray.shape[0])),
                "no face found: the whole image, resized to 48×48",
            )
    probabilities = model.probabilities(face[None])[0]
    print(f"# {path}: {where}")
    for name, p in zip(model.class_names, probabilities, strict=True):
        print(f"{name}\t{p:.4f}")


# --- command line -------------------------------------------------------------------------------


NO_WINDOW = "cannot open a window (no display): write an annotated video with --out FILE.mp4"


def have_display() -> bool:
    """Whether a window can open. On Linux, OpenCV's Qt GUI aborts the process without a display."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def check_out(out: Path, video: Path | None) -> None:
    """Refuse an ``--out`` that is the input video or cannot be written, before the model loads."""
    if video is not None and out.exists() and os.path.samefile(out, video):  # also through links
        raise StageError(f"--out {out}: is the input video {video}; write the annotated copy to another file")
    folder = out.parent
    if not folder.is_dir():
        folder = next((f for f in out.parents if f.is_dir()), Path("."))  # atomic_video creates the rest
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StageError(f"--out {out}: cannot write in {folder} (Permission denied)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.apps.emotion_demo", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", type=int, metavar="INDEX", help="camera index (0: the default camera)")
    source.add_argument("--video", type=Path, metavar="FILE", help="a video file")
    source.add_argument("--image", type=Path, metavar="FILE", help="one image: print the seven probabilities")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the annotated video (.mp4 or .avi) instead of showing a window"
    )
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"exported model (default {DEFAULT_MODEL})")
    args = parser.parse_args(argv)
    if args.image is not None and (args.out is not None or args.max_frames is not None):
        parser.error("--out and --max-frames go with --camera or --video")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    for given in (args.image, args.video):
        if given is not None and not given.is_file():
            raise StageError(f"{given}: no such file")
    if args.out is not None and args.out.suffix.lower() not in CODECS:
        raise StageError(f"--out {args.out}: use a .mp4 or .avi file name")
    if args.out is not None:
        check_out(args.out, args.video)
    if args.image is None and args.out is None and not have_display():
        raise StageError(NO_WINDOW)
    # Inputs first (cheap), then the model (TensorFlow takes seconds to import).
    if args.image is not None:
        gray = read_gray(args.image)
        run_image(args.image, gray, face_detector(), EmotionModel(args.model))
        return
    capture = open_capture(args.camera, args.video)
    try:
        model, detector = EmotionModel(args.model), face_detector()
        source = str(args.video) if args.video is not None else f"camera {args.camera}"
        run_video(capture, source, detector, model, args.out, args.max_frames, live=args.video is None)
    finally:
        capture.release()


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]), "emotion_demo", lock=False)  # writes no stage outputs
