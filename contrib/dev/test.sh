#!/usr/bin/env bash
# Install what is needed, then run every check: ruff, mypy --strict, and all tests (unit and
# end-to-end with the real fence_xvm, fence_virt and libvirtd). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash contrib/dev/setup.sh

echo "== ruff"
.venv/bin/ruff check xvmd ccs tests bench contrib
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
export XVMD_STRICT=1   # a missing real peer or vector file fails the run instead of skipping
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$rc"
