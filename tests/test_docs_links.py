"""The docs hold together: every relative link leads somewhere, and the README stays a front door.

Every relative link (``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)`` and reference
definitions ``[ref]: path``) in README.md, docs/*.md, CHANGELOG.md and results/*/README.md must name
an existing file or folder inside the repository, and an anchor must be a heading of its target, as
GitHub makes it (lowercase; punctuation other than hyphens dropped; spaces become hyphens; a
repeated heading gets -1, -2, ...). Links inside code (fenced blocks, `inline code`) are not links.
External links (http, https, mailto) are not fetched: the tests run offline.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

README_MAX_LINES = 150

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.I)
EXTERNAL = ("http://", "https://", "mailto:")


def doc_files(root: Path = ROOT) -> list[Path]:
    """The pages whose links are checked."""
    files = [root / "README.md", root / "CHANGELOG.md"]
    files += sorted((root / "docs").glob("*.md"))
    files += sorted((root / "results").glob("*/README.md"))
    return [path for path in files if path.is_file()]


def prose_lines(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks (the fence lines themselves dropped)."""
    kept: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and line.lstrip().startswith(fence):
            fence = None
        elif fence is None:
            kept.append(line)
    return kept


def collect_links(path: Path) -> list[str]:
    """Every link target written in the markdown file ``path``, in order (code excluded)."""
    prose = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    prose = INLINE_CODE.sub("code", prose)
    targets = [match.group(1) for match in INLINE_LINK.finditer(prose)]
    targets += [match.group(1) for match in REFERENCE_DEFINITION.finditer(prose)]
    return targets


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file offers: its headings' slugs (repeats numbered) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_errors(files: list[Path], root: Path = ROOT) -> list[str]:
    """One line per link that leads nowhere: ``file: target: why``."""
    errors: list[str] = []
    root = root.resolve()
    for source in files:
        for target in collect_links(source):
            if target.lower().startswith(EXTERNAL):
                continue
            where = f"{source.relative_to(root)}: {target}"
            path_part, _, anchor = target.partition("#")
            path_part = path_part.split("?", 1)[0]
            if not path_part:
                resolved = source.resolve()
            elif path_part.startswith("/"):
                resolved = (root / path_part.lstrip("/")).resolve()
            else:
                resolved = (source.parent / path_part).resolve()
            if not resolved.is_relative_to(root):
                errors.append(f"{where}: outside the repository")
            elif not resolved.exists():
                errors.append(f"{where}: no such file")
            elif anchor:
                if resolved.is_dir() or resolved.suffix.lower() != ".md":
                    errors.append(f"{where}: an anchor into a file that is not markdown")
                elif anchor not in anchors(resolved):
                    errors.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(root)}")
    return errors


def test_every_relative_link_in_the_docs_resolves() -> None:
    files = doc_files()
    assert ROOT / "README.md" in files and any(path.parent.name == "docs" for path in files)
    assert sum(len(collect_links(path)) for path in files) > 20  # the checker sees the docs' links
    errors = link_errors(files)
    assert not errors, "broken links:\n" + "\n".join(errors)


def test_the_readme_is_a_front_door_under_150_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in collect_links(ROOT / "README.md")
        if not target.startswith(EXTERNAL)
    }
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "no docs/*.md"
    assert not [page.name for page in pages if page.resolve() not in linked], "docs pages the README does not link"


def test_github_anchors() -> None:
    assert slug("The real data in one command: `make real`") == "the-real-data-in-one-command-make-real"
    assert slug("TFRecords and input pipelines (tutorials 04–06)") == "tfrecords-and-input-pipelines-tutorials-0406"
    assert slug("Share outputs: a DVC remote, so most users never re-run") == (
        "share-outputs-a-dvc-remote-so-most-users-never-re-run"
    )
    assert slug("The `distribute` param") == "the-distribute-param"
    assert slug("See [the page](x.md) now") == "see-the-page-now"


def test_the_checker_rejects_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text(
        "# B\n\n## A heading, with `code`\n\n## Twice\n\n## Twice\n\n```\n## not a heading\n```\n", encoding="utf-8"
    )
    (tmp_path / "a.md").write_text(
        "# A\n\n"
        "[fine](docs/b.md) [fine anchor](docs/b.md#a-heading-with-code) [second](docs/b.md#twice-1)\n"
        "[self](#a) [web](https://example.com/nowhere.md) ![image](docs/b.md)\n"
        "[missing](docs/nope.md) and [bad anchor](docs/b.md#nowhere)\n"
        "[fenced anchor](docs/b.md#not-a-heading) [no self anchor](#zzz)\n"
        "[escapes](../outside.md)\n"
        "[ref]: docs/gone.md\n"
        "`[in inline code](missing-inline.md)`\n\n"
        "```\n[in a fence](missing-fenced.md)\n```\n",
        encoding="utf-8",
    )
    links = collect_links(tmp_path / "a.md")
    assert "docs/nope.md" in links and "docs/gone.md" in links
    assert "missing-inline.md" not in links and "missing-fenced.md" not in links

    errors = link_errors([tmp_path / "a.md"], root=tmp_path)
    assert [error.split(": ")[1] for error in errors] == [
        "docs/nope.md",
        "docs/b.md#nowhere",
        "docs/b.md#not-a-heading",
        "#zzz",
        "../outside.md",
        "docs/gone.md",
    ], errors
    assert "outside the repository" in errors[4] and "no such file" in errors[0]
