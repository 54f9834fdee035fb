"""docs/ stays true: every problem code is documented with its real severity."""

from __future__ import annotations

import re

from ccs.issues import SEVERITY, Code
from tests.support.harness import REPO


def test_every_code_is_in_the_configuration_doc_with_its_severity() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (error|warning) \|", text, re.M))
    assert set(rows) == {str(c) for c in Code}
    for code in Code:
        assert rows[str(code)] == str(SEVERITY[code]), code


# `path/to/file.py`, `file.py` or `file.py::test_name` inside backticks (tables and prose)
_FILE_REF = re.compile(r"`([A-Za-z0-9_./{},-]*?\.py)(?:::(\w+))?[` ]")


def _python_files() -> list[str]:
    skip = (".venv", ".git", "build", ".eggs")
    return [
        str(p.relative_to(REPO))
        for p in REPO.rglob("*.py")
        if not any(part in skip or part.endswith(".egg-info") for part in p.parts)
    ]


def _resolve(ref: str, files: list[str]) -> list[str]:
    """Files a reference names: a full path, or a unique tail of one (``core/service.py``)."""
    return [f for f in files if f == ref or f.endswith("/" + ref)]


def _expand(ref: str) -> list[str]:
    """``protocol/{history,replay}.py`` names two files."""
    m = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", ref)
    return [m.group(1) + part + m.group(3) for part in m.group(2).split(",")] if m else [ref]


def test_every_python_file_the_docs_name_exists_and_is_unambiguous() -> None:
    files = _python_files()
    problems = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for ref, test in _FILE_REF.findall(doc.read_text()):
            for one in _expand(ref):
                found = _resolve(one, files)
                if len(found) != 1:
                    problems.append(f"{doc.name}: `{one}` matches {found or 'nothing'}")
                elif test and f"def {test}(" not in (REPO / found[0]).read_text():
                    problems.append(f"{doc.name}: {one} has no {test}")
    assert not problems, "\n".join(problems)
