"""SavedModel export with the same bytes for the same weights.

``tf.saved_model.save`` of a ``tf.Module`` writes the same checkpoint for the
same weights, but not the same ``saved_model.pb`` and ``fingerprint.pb``, so
each export would rewrite ``dvc.lock``:

- traced functions are named ``__inference_<name>_<uid>`` from a process-wide
  counter, which everything traced before the export advances (checkpoints
  saved every ``checkpoint_every_s`` seconds do, so a slower machine gets other
  names);
- a while loop's condition (the LSTM and GRU layers) names its unused inputs
  ``<cond function name>___redundant_placeholder<i>``, so the uid is there too;
- the fingerprint carries a random ``uuid`` (TF >= 2.15).

(Keras' ``model.export`` is worse: it orders the variables by object address.)
:func:`save` renumbers the uids by rank (same order, starting at 0), recomputes
the fingerprint with TensorFlow's own function and derives the uuid from its
content hashes, so the directory is a function of the model (tested). Names
are only labels: loading resolves them inside the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FINGERPRINT = "fingerprint.pb"
SAVED_MODEL = "saved_model.pb"
REDUNDANT = "___redundant_placeholder"  # <while cond function>___redundant_placeholder<i>
TRAILING_UIDS = re.compile(r"((?:_\d+)+)$")  # __inference_serve_20872, __inference___backward_f_12_34


def save(module: Any, directory: Path, signatures: Mapping[str, Any] | Any) -> None:
    """``tf.saved_model.save(module, directory, signatures)``, then a content-derived fingerprint uuid."""
    import tensorflow as tf

    tf.saved_model.save(module, str(directory), signatures=signatures)
    renumber_functions(Path(directory) / SAVED_MODEL)
    stabilize_fingerprint(Path(directory))


def renumber_functions(path: Path) -> None:
    """Rename every traced function ``<name>_<uid>`` to ``<name>_<rank of uid>`` throughout ``saved_model.pb``."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    names = {f.signature.name for graph in saved.meta_graphs for f in graph.graph_def.library.function}
    suffixes = {name: TRAILING_UIDS.search(name) for name in names}
    uids = sorted({int(uid) for match in suffixes.values() if match for uid in match.group(1)[1:].split("_")})
    rank = {uid: i for i, uid in enumerate(uids)}
    text = text_format.MessageToString(saved)
    # Longest first, so that no name is replaced inside a longer one; quoted, so only whole strings.
    for name in sorted(names, key=len, reverse=True):
        match = suffixes[name]
        if match:
            renamed = name[: match.start()] + "".join(f"_{rank[int(uid)]}" for uid in match.group(1)[1:].split("_"))
            text = text.replace(f'"{name}"', f'"{renamed}"')
            # A while loop's condition names its unused inputs after itself (LSTM/GRU layers).
            text = text.replace(f"{name}{REDUNDANT}", f"{renamed}{REDUNDANT}")
    renamed_model = text_format.Parse(text, saved_model_pb2.SavedModel())
    numbered = []  # captured resources' arguments are named by an id from the same kind of counter
    for graph in renamed_model.meta_graphs:
        library = graph.graph_def.library
        functions = sorted(library.function, key=lambda f: f.signature.name)  # TF sorted by the old names
        del library.function[:]
        library.function.extend(functions)
        attr_maps = [a.attr for f in library.function for a in f.arg_attr.values()]
        attr_maps += [n.attr for f in library.function for n in f.node_def] + [n.attr for n in graph.graph_def.node]
        numbered += [
            m["_user_specified_name"]
            for m in attr_maps
            if "_user_specified_name" in m and m["_user_specified_name"].s.isdigit()
        ]
    ids = {value: str(i).encode() for i, value in enumerate(sorted({int(a.s) for a in numbered}))}
    for attr in numbered:
        attr.s = ids[int(attr.s)]
    path.write_bytes(renamed_model.SerializeToString(deterministic=True))


def stabilize_fingerprint(directory: Path) -> None:
    """Recompute ``fingerprint.pb`` from the files as they are now, with a content-derived uuid."""
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    path = directory / FINGERPRINT
    if not path.exists():  # fingerprinting switched off
        return
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(str(directory)))
    content = (
        fingerprint.saved_model_checksum,
        fingerprint.graph_def_program_hash,
        fingerprint.signature_def_hash,
        fingerprint.saved_object_graph_hash,
        fingerprint.checkpoint_hash,
    )
    digest = hashlib.sha256(" ".join(map(str, content)).encode()).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))  # 128 bits in decimal, as TF writes it
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))
