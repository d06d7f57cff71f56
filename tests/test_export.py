"""SavedModel export: the same weights give the same bytes, whatever the process traced before."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import ROOT, run

EXPORT = """
import sys
from pathlib import Path
import stages
import keras, tensorflow as tf
from stages.common.export import save

keras.utils.set_random_seed(1)
if sys.argv[3] == "dense":
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    shape = [None, 2]
else:  # a recurrent layer traces a while loop, whose condition names inputs after itself
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3), keras.layers.Dense(2)])
    shape = [None, None, 2]
for i in range(int(sys.argv[2])):  # what training does before an export: trace other functions
    tf.function(lambda x: x * 2).get_concrete_function(tf.TensorSpec([i + 1]))
module = tf.Module()
module.model = model

@tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
def serve(x):
    return module.model(x, training=False)

module.serve = serve
save(module, Path(sys.argv[1]), signatures={"serving_default": serve})
print(model(tf.ones([1, 4, 2][-len(shape):])).numpy().tolist())
"""

LOAD = """
import sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
print(loaded.serve(tf.ones([1, 4, 2][-int(sys.argv[2]):])).numpy().tolist())
print(tf.saved_model.experimental.read_fingerprint(sys.argv[1]).saved_model_checksum)
"""


def digests(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", ["dense", "lstm"])
def test_export_bytes_do_not_depend_on_what_was_traced_before(tmp_path: Path, kind: str) -> None:
    outputs = {}
    for traced in (0, 3, 250):
        result = run(["python", "-c", EXPORT, str(tmp_path / f"m{traced}"), str(traced), kind], ROOT)
        outputs[traced] = result.stdout.strip()
    exports = [digests(tmp_path / f"m{traced}") for traced in (0, 3, 250)]
    assert {"saved_model.pb", "fingerprint.pb", "variables/variables.index"} <= set(exports[0])
    assert exports[0] == exports[1] == exports[2]

    # The renamed functions still load and serve the model; the rewritten fingerprint matches the file.
    rank = "2" if kind == "dense" else "3"
    loaded = run(["python", "-c", LOAD, str(tmp_path / "m250"), rank], ROOT).stdout.strip().splitlines()
    assert loaded[0] == outputs[250]
    assert int(loaded[1]) != 0
