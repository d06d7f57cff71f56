"""Which metrics file each model stage writes: read by the gate (its checks) and the report (its rows).

Kept here, not in either stage, so that the report runs no other stage's code.
"""

from __future__ import annotations

# gate.<section> -> (the DVC stage, the metrics file it writes), in the report's order. The
# sections use `_` for metrics_demo's `@`, so `dvc exp run -S gate.<section>.floor.<key>=...` works.
METRICS_FILES: dict[str, tuple[str, str]] = {
    "simple_nn": ("simple_nn", "metrics/simple_nn.json"),
    "metrics_demo_multiclass": ("metrics_demo@multiclass", "metrics/metrics_demo_multiclass.json"),
    "metrics_demo_imbalanced": ("metrics_demo@imbalanced", "metrics/metrics_demo_imbalanced.json"),
    "metrics_demo_regression": ("metrics_demo@regression", "metrics/metrics_demo_regression.json"),
    "save_restore": ("save_restore", "metrics/save_restore.json"),
    "train_emotion_cnn": ("train_emotion_cnn", "metrics/emotion_cnn.json"),
    "train_sentiment_rnn": ("train_sentiment_rnn", "metrics/sentiment_rnn.json"),
    "train_sentiment_ngram": ("train_sentiment_ngram", "metrics/sentiment_ngram.json"),
    "train_load_rnn": ("train_load_rnn", "metrics/load_forecast.json"),
}
