"""Commands that are not DVC stages: run by hand (or by ``make real``), never by dvc.yaml.

- ``emotion_demo.py``: webcam / video / image demo of the exported emotion CNN
  (``python -m stages.apps.emotion_demo``);
- ``sentiment_predict.py``: P(positive) for review text with the exported sentiment RNN
  (``python -m stages.apps.sentiment_predict``);
- ``real_data.py``: ``make real``, the pipeline on the three real datasets as a DVC
  experiment (``python -m stages.apps.real_data``);
- ``launch_workers.py``: N local workers of one ``tf.distribute`` cluster, each with its
  ``TF_CONFIG`` (``python -m stages.apps.launch_workers -n 2 -- python -m stages.simple_nn``).

The first three read what the stages wrote (models/, recipes/real-data.yaml) and write no stage
outputs; launch_workers runs a stage, whose chief writes its outputs.
"""
