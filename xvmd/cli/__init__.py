"""Command line: ``xvmd [options]`` runs the daemon (``cli/run.py``); each subcommand has its own
module, named in one table and imported only when used (the daemon does not pay for them, nor
they for libvirt).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> module with ``build_parser()`` and ``main(argv) -> int``
SUBCOMMANDS: dict[str, str] = {
    "check-config": "xvmd.cli.check_config",
    "status": "xvmd.cli.status",
    "audit": "xvmd.cli.audit",
    "import-fence-virt-conf": "xvmd.cli.import_conf",
    "confirm-host-down": "xvmd.cli.confirm",
}
DAEMON = "xvmd.cli.run"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[args[0]])
        args = args[1:]
    else:
        module = importlib.import_module(DAEMON)
    code: int = module.main(args)
    return code
