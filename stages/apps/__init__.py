"""Commands that are not DVC stages: run by hand (or by ``make real``), never by dvc.yaml.

- ``emotion_demo.py``: webcam / video / image demo of the exported emotion CNN
  (``python -m stages.apps.emotion_demo``);
- ``sentiment_predict.py``: P(positive) for review text with the exported sentiment RNN
  (``python -m stages.apps.sentiment_predict``);
- ``real_data.py``: ``make real``, the pipeline on the three real datasets as a DVC
  experiment (``python -m stages.apps.real_data``).

They read what the stages wrote (models/, recipes/real-data.yaml) and write no stage outputs.
"""
