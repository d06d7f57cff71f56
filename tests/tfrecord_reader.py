"""An independent TFRecord reader for the tests: the PyPI ``tfrecord`` package, no TensorFlow.

``tfrecord`` ships its own copy of TensorFlow's example protos, which clash
with TensorFlow's in one process, so the tests run this file as a script in a
subprocess (:func:`read_independently`)::

    python tests/tfrecord_reader.py FILE [--sequence] [--png FEATURE]

It prints JSON ``{"crc_ok": [...], "records": [...]}``: per record whether both
masked CRC32Cs are right (a pure-Python CRC32C, independent of the ``crc32c``
package our writer uses), and the parsed features as plain lists (bytes as
latin-1 strings; ``--png FEATURE`` decodes that feature with OpenCV into a
pixel list instead).
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def crc_checks(path: Path) -> list[bool]:
    """For each record: are the length and data CRCs both right?"""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    ok, pos = [], 0
    while pos < len(raw):
        header = raw[pos : pos + 12]
        (length,) = struct.unpack("<Q", header[:8])
        data = raw[pos + 12 : pos + 12 + length]
        (length_crc,) = struct.unpack("<I", header[8:])
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        ok.append(length_crc == masked(header[:8]) and data_crc == masked(data))
        pos += 16 + length
    return ok


def _values(feature: Any, png: bool) -> Any:
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value)
    if png:
        import cv2
        import numpy as np

        image = cv2.imdecode(np.frombuffer(values[0], np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None, "not a PNG OpenCV can read"
        return image.ravel().tolist()
    if kind == "bytes_list":
        return [v.decode("latin-1") for v in values]
    return values


def _features(features: Any, png_feature: str | None) -> dict[str, Any]:
    return {name: _values(f, name == png_feature) for name, f in sorted(features.feature.items())}


def main(argv: list[str]) -> None:
    from tfrecord import example_pb2
    from tfrecord.reader import tfrecord_iterator

    path = Path(argv[0])
    sequence = "--sequence" in argv
    png = argv[argv.index("--png") + 1] if "--png" in argv else None
    compression = "gzip" if path.name.endswith(".gz") else None
    out = []
    for raw in tfrecord_iterator(str(path), compression_type=compression):
        if sequence:
            message = example_pb2.SequenceExample.FromString(bytes(raw))
            lists = {
                name: [_values(f, False) for f in fl.feature] for name, fl in message.feature_lists.feature_list.items()
            }
            out.append({"context": _features(message.context, None), "feature_lists": lists})
        else:
            out.append(_features(example_pb2.Example.FromString(bytes(raw)).features, png))
    print(json.dumps({"crc_ok": crc_checks(path), "records": out}))


def read_independently(path: Path, sequence: bool = False, png: str | None = None) -> dict[str, Any]:
    """Run this reader on ``path`` in a subprocess that never imports TensorFlow."""
    args = (
        [sys.executable, __file__, str(path)] + (["--sequence"] if sequence else []) + (["--png", png] if png else [])
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"tfrecord_reader failed on {path}:\n{result.stderr}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
