"""SavedModel export with the same bytes for the same weights.

``tf.saved_model.save`` of a ``tf.Module`` writes a deterministic graph and
checkpoint, but ``fingerprint.pb`` carries a random ``uuid`` (TF >= 2.15), so
every export differs and rewrites ``dvc.lock``. Keras' ``model.export`` is worse:
it orders the variables by object address. :func:`save` exports a module and
replaces the uuid by one derived from the fingerprint's content hashes, so the
whole directory is a function of the model (tested). The uuid only labels the
export for TF's telemetry; loading never reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FINGERPRINT = "fingerprint.pb"


def save(module: Any, directory: Path, signatures: Mapping[str, Any] | Any) -> None:
    """``tf.saved_model.save(module, directory, signatures)``, then a content-derived fingerprint uuid."""
    import tensorflow as tf

    tf.saved_model.save(module, str(directory), signatures=signatures)
    stabilize_fingerprint(Path(directory))


def stabilize_fingerprint(directory: Path) -> None:
    from tensorflow.core.protobuf import fingerprint_pb2

    path = directory / FINGERPRINT
    if not path.exists():  # older TF writes none
        return
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
    content = (fingerprint.saved_model_checksum, fingerprint.graph_def_program_hash, fingerprint.signature_def_hash,
               fingerprint.saved_object_graph_hash, fingerprint.checkpoint_hash)
    digest = hashlib.sha256(" ".join(map(str, content)).encode()).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))  # 128 bits in decimal, as TF writes it
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))
