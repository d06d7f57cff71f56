"""The data sets' own formats, one file each: how a raw file is read, parsed and checked.

- ``tabular.py``: the CSV of the small tabular data sets (toy_data, simple_nn, metrics_demo,
  save_restore);
- ``imdb_text.py``: IMDB review text -> token ids: HTML stripping, the tokenizer, the vocabulary
  (download_imdb, tfrecords_imdb, the sentiment stages and the predict command);
- ``fer2013_csv.py``: the ``fer2013.csv`` format, its classes and usages (download_fer2013,
  tfrecords_fer2013, the emotion CNN);
- ``fer2013_images.py``: FER2013 as a folder of images (``train/<emotion>/*.jpg``), read into
  the same rows (download_fer2013).

The machinery every stage shares stays in ``stages/common/``.
"""
