"""The validation sweep behind the aclImdb RNN recipe: one training of the stage's network
(``stages.train_sentiment_rnn.train_model``) at params.yaml's ``train_sentiment_rnn`` with the given
overrides; the test split is not read.

    python results/imdb-rnn-search/sweep.py DATA_DIR OUT_DIR SEED '{"units": 96, ...}'

Writes OUT_DIR/summary.json (params, best epoch, validation accuracy, seconds), history.tsv and
valid_logits.npy (the best weights' validation logits in file order, to score seed ensembles).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from stages.common.input_pipelines import text_batches
from stages.common.outputs import write_history
from stages.train_sentiment_rnn import TrainSentimentRnnParams, train_model

data, out, seed, overrides = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
values = {**yaml.safe_load(Path("params.yaml").read_text())["train_sentiment_rnn"], **overrides}
p = TrainSentimentRnnParams(**values)
out.mkdir(parents=True, exist_ok=True)
start = time.time()
trainer, history = train_model(p, seed, data, checkpoints=out / "checkpoints")
labels, logits = trainer.predict_labelled(text_batches(data, "valid", 256))
accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
np.save(out / "valid_logits.npy", logits)
np.save(out / "valid_labels.npy", labels)
write_history(out / "history.tsv", history)
summary = {
    "overrides": overrides,
    "seed": seed,
    "valid_accuracy": accuracy,
    "best_epoch": history.best_epoch,
    "epochs": len(history),
    "seconds": round(time.time() - start),
}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
