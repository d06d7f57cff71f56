"""Stage download_imdb: download (resume, retries, verification), safe extraction, checks, the sample."""

from __future__ import annotations

import hashlib
import io
import random
import re
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run
from helpers import read_report, snapshot
from http_server import FileServer
from stages.common.archives import extract_archive
from stages.common.cli import StageError
from stages.common.download import download, part_path
from stages.download_imdb import count_tokens, decode_utf8
from stages.samples.imdb import generate

STAGE = ["python", "-m", "stages.download_imdb"]
RAW = Path("data/raw/imdb/aclImdb")
REPORT = Path("metrics/data_imdb.json")
PADDING = 2_500_000  # incompressible extra member: the tarball spans several 1 MiB download chunks


# --- helpers -----------------------------------------------------------------


def review_files() -> dict[str, bytes]:
    """A tiny aclImdb tree: 2 reviews per labelled folder, one unlabelled."""
    files = {}
    for split in ("train", "test"):
        for label, ratings in (("neg", (1, 3)), ("pos", (8, 10))):
            for i, rating in enumerate(ratings):
                files[f"aclImdb/{split}/{label}/{i}_{rating}.txt"] = (
                    f"A {label} {split} review number {i}.<br /><br />It was fine.".encode()
                )
    files["aclImdb/train/unsup/0_0.txt"] = b"An unlabelled review."
    return files


def make_tarball(files: dict[str, bytes], padding: int = 0, links: dict[str, str] | None = None) -> bytes:
    """A gzipped tar of ``files``, an ``aclImdb/imdb.vocab`` of random bytes, and symlinks."""
    if padding:
        files = {**files, "aclImdb/imdb.vocab": random.Random(0).randbytes(padding)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_params(workdir: Path, **imdb: object) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    base = params["imdb"]  # params.yaml holds every default: the keys not given keep its values
    params["imdb"] = {
        **base,
        "backoff": 0.0,
        **{k: {**base[k], **v} if isinstance(v, dict) else v for k, v in imdb.items()},
    }
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(workdir: Path, **imdb: object):
    write_params(workdir, **imdb)
    return run(STAGE, workdir, check=False, timeout=120)


def ok(result) -> None:
    assert result.returncode == 0, result.stderr


def failed(result, *fragments: str) -> str:
    """The one error line of a failed run, checked for ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def report(workdir: Path) -> dict:
    return read_report(workdir, REPORT)


def assert_nothing_written(workdir: Path) -> None:
    """A failed first run leaves no file under data/ or metrics/ (empty folders are fine)."""
    assert snapshot(workdir) == {}


def served(server: FileServer, files: dict[str, bytes] | None = None, padding: int = PADDING) -> tuple[str, bytes]:
    data = make_tarball(files or review_files(), padding)
    server.files["aclImdb_v1.tar.gz"] = data
    return server.url("aclImdb_v1.tar.gz"), data


# --- url source: the HTTP paths ------------------------------------------------


def test_url_source_downloads_verifies_extracts_and_caches(workdir: Path, http_server: FileServer) -> None:
    url, data = served(http_server)
    ok(stage(workdir, source="url", url=url, sha256=sha(data), size=len(data)))
    reviews = sorted(p.relative_to(workdir / RAW).as_posix() for p in (workdir / RAW).rglob("*.txt"))
    assert reviews == sorted(name.removeprefix("aclImdb/") for name in review_files() if "unsup" not in name)
    assert not (workdir / RAW / "imdb.vocab").exists()  # only the labelled reviews
    assert (workdir / "data/downloads/imdb/aclImdb_v1.tar.gz").read_bytes() == data
    rep = report(workdir)
    assert rep["source"] == "url" and rep["source_location"] == url and rep["source_sha256"] == sha(data)
    assert rep["reviews"] == {"train": {"neg": 2, "pos": 2}, "test": {"neg": 2, "pos": 2}, "total": 8}
    assert rep["tokens"]["all"]["max"] == 9  # "0.<br /><br />It": tags separate words

    before, requests = snapshot(workdir), len(http_server.requests)
    ok(stage(workdir, source="url", url=url, sha256=sha(data), size=len(data)))
    assert len(http_server.requests) == requests  # the verified download is a cache
    assert snapshot(workdir) == before  # and the outputs are byte-identical


def test_dropped_connection_is_resumed_with_range(workdir: Path, http_server: FileServer) -> None:
    url, data = served(http_server)
    http_server.drop_after = len(data) // 2
    result = stage(workdir, source="url", url=url, sha256=sha(data), size=len(data))
    ok(result)
    assert "connection dropped" in result.stderr
    assert [r for _, r in http_server.requests] == [None, "bytes=1048576-"]  # the first whole MiB kept
    assert (workdir / "data/downloads/imdb/aclImdb_v1.tar.gz").read_bytes() == data
    assert report(workdir)["reviews"]["total"] == 8


def test_checksum_mismatch_keeps_previous_outputs_and_no_download(workdir: Path, http_server: FileServer) -> None:
    ok(stage(workdir, source="sample", sample={"per_class": 3}))
    before = snapshot(workdir)
    url, data = served(http_server, padding=0)
    wrong = "0" * 64
    failed(stage(workdir, source="url", url=url, sha256=wrong, size=None), url, "sha256 mismatch", wrong, sha(data))
    assert snapshot(workdir) == before  # no download, no .part, the previous outputs untouched


def test_404_fails_at_once(workdir: Path, http_server: FileServer) -> None:
    url = http_server.url("missing.tar.gz")
    failed(stage(workdir, source="url", url=url, retries=3), url, "HTTP 404")
    assert len(http_server.requests) == 1  # a 4xx is not retried
    assert_nothing_written(workdir)


def test_stalled_server_times_out(workdir: Path, http_server: FileServer) -> None:
    url, data = served(http_server, padding=0)
    http_server.stall = True
    start = time.monotonic()
    failed(
        stage(workdir, source="url", url=url, sha256=sha(data), size=len(data), read_timeout=0.5, retries=1),
        url,
        "failed after 2 attempts",
        "timed out",
    )
    assert time.monotonic() - start < 20
    assert len(http_server.requests) == 2
    assert_nothing_written(workdir)


def test_member_escaping_the_target_is_refused(workdir: Path, http_server: FileServer, tmp_path: Path) -> None:
    url, data = served(http_server, {**review_files(), "../evil": b"gotcha"}, padding=0)
    failed(stage(workdir, source="url", url=url, sha256=sha(data), size=None), "aclImdb_v1.tar.gz", "'../evil'")
    assert not list(tmp_path.rglob("evil"))
    downloads = workdir / "data/downloads/imdb"
    assert [p.name for p in downloads.iterdir()] == ["aclImdb_v1.tar.gz"]  # verified, kept as cache
    assert not (workdir / "data/raw/imdb").exists() and not (workdir / REPORT).exists()
    assert [p.name for p in (workdir / "data/raw").iterdir()] == []  # no extraction scratch left


def test_download_restarts_when_the_server_ignores_range(tmp_path: Path, http_server: FileServer) -> None:
    url, data = served(http_server)
    http_server.drop_after, http_server.ignore_range = 100_000, True
    dest = download(url, tmp_path / "a.tar.gz", sha(data), len(data), backoff=0, chunk_size=1 << 14)
    assert dest.read_bytes() == data and not part_path(dest).exists()
    assert http_server.requests[1][1] is not None  # asked to resume, got the whole file


def test_download_resumes_a_part_file_and_replaces_a_bad_cache(tmp_path: Path, http_server: FileServer) -> None:
    url, data = served(http_server, padding=50_000)
    dest = tmp_path / "a.tar.gz"
    part_path(dest).write_bytes(data[:1000])  # left by an interrupted run
    download(url, dest, sha(data), len(data), backoff=0)
    assert dest.read_bytes() == data and http_server.requests[-1][1] == "bytes=1000-"
    dest.write_bytes(b"corrupted")
    download(url, dest, sha(data), len(data), backoff=0)
    assert dest.read_bytes() == data and http_server.requests[-1][1] is None


def test_download_gives_up_on_a_refused_connection(tmp_path: Path) -> None:
    with FileServer() as server:
        url = server.url("a.tar.gz")  # the port is closed once the server stops
    with pytest.raises(StageError, match=r"failed after 2 attempts"):
        download(url, tmp_path / "a.tar.gz", None, retries=1, backoff=0, connect_timeout=1)
    assert list(tmp_path.iterdir()) == []


# --- path source, archives and file checks ---------------------------------------


def test_path_source_tarball_and_folder_give_the_same_tree(workdir: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "aclImdb_v1.tar.gz"
    tarball.write_bytes(make_tarball(review_files()))
    ok(stage(workdir, source="path", path=str(tarball), include_unsup=True))
    from_tar = report(workdir)
    assert from_tar["source_sha256"] == sha(tarball.read_bytes())
    assert from_tar["reviews"]["train"] == {"neg": 2, "pos": 2, "unsup": 1}

    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    for folder in (tmp_path / "extracted", tmp_path / "extracted/aclImdb"):  # the parent or aclImdb/ itself
        ok(stage(workdir, source="path", path=str(folder), include_unsup=True))
        assert report(workdir)["tree_sha256"] == from_tar["tree_sha256"]
        assert report(workdir)["source_sha256"] is None


def test_truncated_gzip_is_a_clear_error(workdir: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "aclImdb_v1.tar.gz"
    tarball.write_bytes(make_tarball(review_files(), padding=200_000)[:150_000])
    failed(stage(workdir, source="path", path=str(tarball)), str(tarball), "truncated")
    assert_nothing_written(workdir)


@pytest.mark.parametrize("cut", [1, 4, 12])
def test_gzip_cut_anywhere_is_caught(tmp_path: Path, cut: int) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tarball(review_files())[:-cut])  # only the trailer or padding missing
    with pytest.raises(StageError, match=r"a\.tar\.gz: not a readable tar archive, or truncated"):
        extract_archive(archive, tmp_path / "out")


@pytest.mark.parametrize(
    "files, links",
    [
        ({"../evil": b"x"}, {}),
        ({"aclImdb/../../evil": b"x"}, {}),
        ({"/tmp/evil": b"x"}, {}),
        ({}, {"aclImdb/train/pos/0_9.txt": "/etc/passwd"}),
        ({}, {"aclImdb/train/pos": "../../.."}),
    ],
)
def test_tar_members_leading_outside_are_refused(tmp_path: Path, files: dict, links: dict) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tarball({**review_files(), **files}, links=links))
    bad = next(iter(files or links))
    with pytest.raises(StageError, match=re.escape(f"a.tar.gz: refusing member {bad!r}")):
        extract_archive(archive, tmp_path / "out")
    assert not list(tmp_path.rglob("evil"))


def test_zip_extraction_filters_and_refuses_escaping_members(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/keep.csv", "a,b\n")
        zf.writestr("data/other.txt", "x")
    assert extract_archive(archive, tmp_path / "out", keep=lambda n: n.endswith(".csv")) == 1
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["keep.csv"]
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../evil.csv", "x")
    with pytest.raises(StageError, match=r"a\.zip: refusing member '\.\./evil\.csv'"):
        extract_archive(archive, tmp_path / "out2")


def messy_tree(root: Path) -> Path:
    """An aclImdb folder with one of each problem the checks look for."""
    for relative, data in review_files().items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    tree = root / "aclImdb"
    (tree / "train/pos/5_8.txt").write_bytes(b"Caf\xe9 scene was great \xff\xfe.")  # latin-1 + junk
    (tree / "train/pos/6_9.txt").write_bytes(b"<br /><br />  \n")  # empty once tags go
    (tree / "train/neg/notes.txt").write_bytes(b"not a review")
    (tree / "test/neg/7_9.txt").write_bytes(b"rated 9 in neg")
    return tree


def test_file_checks_are_reported_with_skip(workdir: Path, tmp_path: Path) -> None:
    messy_tree(tmp_path)
    ok(stage(workdir, source="path", path=str(tmp_path), on_bad_file="skip"))
    rep = report(workdir)
    assert rep["problems"] == {
        "bad_file_names": 1,
        "rating_mismatches": 1,
        "skipped_files": 2,
        "empty_files": 1,
        "invalid_utf8_files": 1,
        "invalid_utf8_bytes": 3,
    }
    assert rep["examples"]["bad_file_names"] == ["train/neg/notes.txt"]
    assert rep["examples"]["rating_mismatches"] == ["test/neg/7_9.txt"]
    assert rep["examples"]["empty_files"] == ["train/pos/6_9.txt"]
    assert rep["reviews"]["train"] == {"neg": 2, "pos": 4} and rep["reviews"]["test"]["neg"] == 2
    fixed = (workdir / RAW / "train/pos/5_8.txt").read_text(encoding="utf-8")
    assert fixed == "Caf\ufffd scene was great \ufffd\ufffd."
    assert not (workdir / RAW / "train/neg/notes.txt").exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        ("train/neg/notes.txt", "bad file name"),
        ("test/neg/7_9.txt", "rating 9 does not fit folder neg (1-4)"),
    ],
)
def test_bad_files_fail_by_default(workdir: Path, tmp_path: Path, bad: str, message: str) -> None:
    tree = messy_tree(tmp_path)
    for other in {"train/neg/notes.txt", "test/neg/7_9.txt"} - {bad}:
        (tree / other).unlink()
    failed(stage(workdir, source="path", path=str(tree)), str(tree / bad), message)
    assert_nothing_written(workdir)


def test_params_are_checked_before_any_work(workdir: Path) -> None:
    failed(stage(workdir, source="path"), "imdb", "path: required when source is path")
    failed(stage(workdir, source="url", url="ftp://example.org/a.tgz"), "url: must be an http(s) URL")
    failed(stage(workdir, source="sample", sample={"preset": "huge"}), "imdb.sample.preset")
    assert_nothing_written(workdir)


def test_decode_utf8_counts_replaced_bytes() -> None:
    assert decode_utf8("héllo".encode()) == ("héllo", 0)
    assert decode_utf8(b"a\xffb\xc3") == ("a\ufffdb\ufffd", 2)
    assert count_tokens("one<br /><br />two  three") == 3


# --- the embedded sample ----------------------------------------------------------


def test_sample_layout_report_and_determinism(workdir: Path) -> None:
    ok(stage(workdir, sample={"per_class": 20}))
    first = snapshot(workdir)
    for split in ("train", "test"):
        for label, ratings in (("neg", range(1, 5)), ("pos", range(7, 11))):
            names = [p.name for p in (workdir / RAW / split / label).iterdir()]
            assert len(names) == 20
            assert all((m := re.fullmatch(r"(\d+)_(\d+)\.txt", n)) and int(m.group(2)) in ratings for n in names)
    rep = report(workdir)
    assert rep["source"] == "sample" and rep["source_sha256"] is None and rep["reviews"]["total"] == 80
    assert not any(rep["problems"].values())
    ok(stage(workdir, sample={"per_class": 20}))
    assert snapshot(workdir) == first  # same seed, same bytes
    write_params(workdir, sample={"per_class": 20})
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["seed"] += 1
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    ok(run(STAGE, workdir, check=False))
    assert report(workdir)["tree_sha256"] != rep["tree_sha256"]


def read_tree(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for label in ("neg", "pos"):
        for path in sorted((root / "aclImdb" / split / label).iterdir()):
            texts.append(re.sub(r"<[^>]*>", " ", path.read_text(encoding="utf-8")))
            labels.append(label == "pos")
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def sample_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    generate(root, seed=7, per_class=500)
    return root


def test_sample_lengths_are_heavy_tailed_like_imdb(sample_tree: Path) -> None:
    texts = read_tree(sample_tree, "train")[0] + read_tree(sample_tree, "test")[0]
    lengths = np.array([len(t.split()) for t in texts])
    assert 180 <= np.median(lengths) <= 225
    assert 235 <= lengths.mean() <= 300
    assert (lengths > 1000).sum() >= 10 and lengths.max() <= 2_800 and lengths.min() >= 10
    assert any("<br /><br />" in p.read_text() for p in list((sample_tree / "aclImdb/train/pos").iterdir())[:20])


def test_sample_word_order_matters(sample_tree: Path) -> None:
    """Unigram counts do clearly worse than bigrams, which see "not good" and "but"."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train, test = read_tree(sample_tree, "train"), read_tree(sample_tree, "test")
    accuracy = {}
    for ngrams in ((1, 1), (1, 2)):
        vectorizer = CountVectorizer(ngram_range=ngrams, min_df=2)
        model = LogisticRegression(C=0.1, max_iter=1000).fit(vectorizer.fit_transform(train[0]), train[1])
        accuracy[ngrams] = model.score(vectorizer.transform(test[0]), test[1])
    assert 0.6 < accuracy[(1, 1)] < 0.85, accuracy  # learnable, but not from words alone
    assert accuracy[(1, 2)] > accuracy[(1, 1)] + 0.05, accuracy


def test_movie_lists_are_kept_checked_and_counted(workdir: Path, tmp_path: Path) -> None:
    """The official tarball's urls_{pos,neg}.txt (line i: the movie of review i) travel with the reviews."""
    from stages.tfrecords_imdb import movie_of

    tree = tmp_path / "aclImdb"
    generate(tmp_path, seed=1, per_class=12)
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            top = max(int(f.name.split("_")[0]) for f in (tree / split / label).iterdir())
            lines = [f"http://www.imdb.com/title/tt{i // 3:07d}/usercomments" for i in range(top + 1)]
            (tree / split / f"urls_{label}.txt").write_text("\n".join(lines) + "\n")
    ok(stage(workdir, source="path", path=str(tree)))
    raw = workdir / "data/raw/imdb/aclImdb"
    assert (raw / "train/urls_pos.txt").read_text() == (tree / "train/urls_pos.txt").read_text()
    movies = report(workdir)["movies"]
    assert set(movies) == {"train", "test"} and all(n > 0 for n in movies.values())
    movie = movie_of(raw, "train")
    assert movie is not None and movie[(1, 0)] == "http://www.imdb.com/title/tt0000000/usercomments"

    (tree / "test/urls_pos.txt").rename(tmp_path / "urls_pos.txt")  # a partial set: ignored, and said
    result = stage(workdir, source="path", path=str(tree))
    ok(result)
    assert "test/urls_pos.txt: missing, so no movie list is used" in result.stderr, result.stderr
    assert report(workdir)["movies"] is None and not (raw / "train/urls_pos.txt").exists()
    (tmp_path / "urls_pos.txt").rename(tree / "test/urls_pos.txt")

    ok(stage(workdir, source="path", path=str(tree)))
    before = snapshot(workdir)
    lines = (tree / "train/urls_neg.txt").read_text().splitlines()
    (tree / "train/urls_neg.txt").write_text("\n".join(lines[:2]) + "\n")
    failed(stage(workdir, source="path", path=str(tree)), "train/urls_neg.txt: lists 2 movies, but review ids go up to")
    assert snapshot(workdir) == before
