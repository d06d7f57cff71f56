"""The embedded samples' generators: synthetic stand-ins for the real datasets, in their real raw formats.

- ``imdb.py``: movie reviews as the ``aclImdb`` folder tree (download_imdb);
- ``fer2013.py``: drawn 48×48 faces as the FER2013 CSV (download_fer2013);
- ``series.py``: Spanish hourly load as an ENTSO-E CSV export (make_series).

Every module has the same entry point::

    write_sample(destination: Path, seed: int, *, <sizes and options>) -> None

It writes the dataset's raw format at ``destination`` (imdb: the ``aclImdb`` folder
itself, holding ``{train,test}/{pos,neg}/``; fer2013 and series: the CSV file),
creating missing parent folders. The sizes and options are keyword-only; the same
seed and arguments give the same bytes. The stages read what it writes with the
same code as the real data.
"""
