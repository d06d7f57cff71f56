"""The validation sweep behind the n-gram recipe: one run of the stage's training at the given params,
printing each epoch's validation accuracy (the test split is not read).

    python results/sentiment-ngram/sweep.py DATA_DIR BUCKETS L2 LR BATCH ALPHA MAX_EPOCHS [plain]

``plain``: no NB weighting (the ratios stay 1: a logistic regression on the binary features).
"""

import sys
import time
from pathlib import Path

import keras

from stages.common.input_pipelines import read_spec, text_batches
from stages.common.seeding import seed_everything
from stages.common.training import EarlyStopping, Trainer
from stages.models.sentiment_ngram import build_sentiment_ngram, nb_ratios, set_nb_ratios

data = Path(sys.argv[1])
buckets, l2, lr, batch, alpha, epochs = (
    int(sys.argv[2]),
    float(sys.argv[3]),
    float(sys.argv[4]),
    int(sys.argv[5]),
    float(sys.argv[6]),
    int(sys.argv[7]),
)
nb = len(sys.argv) <= 8 or sys.argv[8] != "plain"
boundaries = [100, 200, 300, 400, 500, 600]
seed_everything(42)
vocab_size = int(read_spec(data)["vocab_size"])
model = build_sentiment_ngram(vocab_size, buckets=buckets, l2=l2)
if nb:
    set_nb_ratios(model, nb_ratios(text_batches(data, "train", 256), vocab_size, buckets, alpha))
trainer = Trainer(
    model,
    keras.optimizers.Adam(lr),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
)
start = time.time()
history = trainer.fit(
    train=lambda e: text_batches(data, "train", batch, shuffle_seed=42, epoch=e, bucket_boundaries=boundaries),
    epochs=epochs,
    validation=lambda: text_batches(data, "valid", 256),
    early_stopping=EarlyStopping("val_accuracy", "max", 3),
)
print("fit", time.time() - start)
for row in history:
    print({k: round(v, 4) for k, v in row.items()})
print("best", history.best_epoch, trainer.evaluate(text_batches(data, "valid", 256)))
