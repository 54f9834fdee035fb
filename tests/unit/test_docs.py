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
