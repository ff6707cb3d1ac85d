"""The documentation a user reads: a short README without lab-notebook dates, links and `docs/…` paths that
resolve in the repository, and no reference to the project's private method note."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_DIRS = [ROOT / "src", ROOT / "benchmarks"]
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".sh"}

MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?"
    r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
DATE = re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{MONTHS}\b|\b{MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\w")  # docs/method.md, docs/mnist5k_ood.png
PRIVATE_NOTE = "METHOD.md"


def code_files(*dirs: Path) -> list[Path]:
    return sorted(
        p
        for d in dirs
        for p in d.rglob("*")
        if p.suffix in CODE_SUFFIXES and p.is_file() and ".egg-info" not in str(p) and "__pycache__" not in str(p)
    )


def test_readme_is_short_and_undated():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200, "README.md should stay a guide of under 200 lines"
    dates = DATE.findall(text)
    assert not dates, f"README.md carries experiment dates {dates}; dated history belongs in docs/experiments.md"


def test_readme_starts_with_the_two_set_up_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index("```bash") < text.index("\n## ")
    assert [line.split()[:2] for line in block.group(1).splitlines()] == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_and_docs_paths_resolve(doc: Path):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # URLs and in-page anchors
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    for path in DOCS_PATH.findall(text):
        if not ((ROOT / path).exists() or (doc.parent / path).exists()):
            missing.append(path)
    assert not missing, f"{doc.relative_to(ROOT)} points to files that do not exist: {missing}"


def test_docs_paths_in_code_resolve():
    missing = [
        f"{p.relative_to(ROOT)}: {path}"
        for p in code_files(*CODE_DIRS)
        for path in DOCS_PATH.findall(p.read_text(encoding="utf-8"))
        if not (ROOT / path).exists()
    ]
    assert not missing, f"docstrings or comments cite files that do not exist: {missing}"


def test_no_reference_to_the_private_method_note():
    files = code_files(*CODE_DIRS, ROOT / "tests") + MARKDOWN
    offenders = [
        str(p.relative_to(ROOT))
        for p in files
        if p.name != "test_docs.py" and PRIVATE_NOTE in p.read_text(encoding="utf-8")
    ]
    assert not offenders, f"{PRIVATE_NOTE} is not in the repository; cite docs/method.md instead: {offenders}"
