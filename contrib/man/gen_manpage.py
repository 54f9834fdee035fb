#!/usr/bin/env python3
"""Generate the xvmd(8) manual page in roff from the real argparse parsers.

    python contrib/man/gen_manpage.py > xvmd.8

Options, their metavars, choices, help texts and defaults come from ``build_parser()`` of
``xvmd.cli.run`` (the daemon) and of every subcommand's module (check-config, status, audit, ...:
named in ``xvmd.cli.SUBCOMMANDS``, so a new subcommand appears by itself); the exit codes
come from those modules' docstrings and the default paths from the modules that define them.
NAME, DESCRIPTION, SIGNALS, ENVIRONMENT, FILES, EXAMPLES and SEE ALSO are written here. The
output is deterministic (no date), so the copy committed as docs/xvmd.8 can be checked against
a fresh run (tests/e2e/test_package.py does).

The xvmd and ccs packages are imported from this source tree, never from an installed copy;
importing them needs lxml (it does not need libvirt, pyroute2 or watchdog).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]

SEE_ALSO = [
    ("fence_xvm", "8"),
    ("fence_virt", "8"),
    ("fence_virtd", "8"),
    ("corosync", "8"),
    ("corosync.conf", "5"),
    ("votequorum", "5"),
    ("libvirtd", "8"),
    ("systemd.service", "5"),
]


@dataclass(frozen=True)
class Command:
    name: str  # "xvmd", "xvmd check-config", ...
    module: ModuleType  # whose docstring holds "Exit codes:"
    parser: argparse.ArgumentParser


def _import(name: str) -> ModuleType:
    return importlib.import_module(name)


def load() -> tuple[ModuleType, list[Command]]:
    """Import xvmd from this tree and build every parser."""
    if sys.path[:1] != [str(REPO)]:
        sys.path.insert(0, str(REPO))
    xvmd = _import("xvmd")
    if not str(Path(xvmd.__file__ or "").resolve()).startswith(str(REPO)):
        raise SystemExit(f"gen_manpage: imported xvmd from {xvmd.__file__}, not from {REPO}")
    cli = _import("xvmd.cli")
    daemon = _import(cli.DAEMON)
    commands = [Command("xvmd", daemon, daemon.build_parser())]
    for name, module_name in subcommand_modules():
        module = _import(module_name)
        parser = module.build_parser()
        if parser.prog != f"xvmd {name}":
            raise SystemExit(
                f"gen_manpage: {module_name} parser is {parser.prog!r}, not 'xvmd {name}'"
            )
        commands.append(Command(parser.prog, module, parser))
    return xvmd, commands


def subcommand_modules() -> list[tuple[str, str]]:
    """(command, module) pairs from xvmd.cli.SUBCOMMANDS, in its order."""
    cli = _import("xvmd.cli")
    return list(cli.SUBCOMMANDS.items())


# --- roff --------------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Escape running text for roff: backslashes, and every hyphen as \\- (a real minus, so
    options and paths copy and paste correctly)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def line(text: str) -> str:
    """An escaped text line that roff will not take for a request (leading . or ')."""
    out = esc(text)
    return "\\&" + out if out.startswith((".", "'")) else out


def literals(text: str) -> str:
    """Escaped text with ``rst literals`` and 'quoted commands' in bold."""
    out = esc(text)
    out = re.sub(r"``(.+?)``", r"\\fB\1\\fR", out)
    return out


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


# --- argparse ------------------------------------------------------------------------------------


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS]


def _positional(action: argparse.Action) -> str:
    return action.metavar if isinstance(action.metavar, str) else action.dest


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _value(action: argparse.Action, styled: bool) -> str:
    """The value part of an option: METAVAR, a|b|c for choices, [METAVAR] when optional."""
    if action.choices is not None:
        words = [str(c) for c in action.choices]
        text = "|".join(bold(w) for w in words) if styled else "|".join(words)
    else:
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        text = italic(metavar) if styled else metavar
    return f"[{text}]" if action.nargs == "?" else text


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion, e.g. %(default)s
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        if action.choices is not None:
            params["choices"] = ", ".join(str(c) for c in action.choices)
        text = text % {**params, "prog": parser.prog}
    return text


def _default_note(action: argparse.Action, help_text: str) -> str:
    """Say the default unless the help text already does, or there is none worth saying."""
    if "default" in help_text.lower() or not _takes_value(action):
        return ""
    default = action.default
    if default is None or default is argparse.SUPPRESS or default is False or default == []:
        return ""
    return f" (default: {default})"


def synopsis(command: Command) -> list[str]:
    out = [f'.SY "{esc(command.name)}"']
    for action in _visible(command.parser):
        if not action.option_strings:
            name = italic(_positional(action))
            out.append(f"[{name}]" if action.nargs in ("?", "*") else name)
            continue
        opt = esc(action.option_strings[0])
        if _takes_value(action):
            # .OP puts its second argument in italics; choices are spelled out in bold instead.
            if action.choices is not None or action.nargs == "?":
                # "\ " is an unbreakable space: the option stays with its value.
                out.append(f"[{bold(action.option_strings[0])}\\ {_value(action, True)}]")
            else:
                out.append(f".OP {opt} {esc(_value(action, False))}")
        else:
            out.append(f".OP {opt}")
    out.append(".YS")
    return out


def options(command: Command) -> list[str]:
    out = []
    for action in _visible(command.parser):
        if action.option_strings:
            names = ", ".join(bold(o) for o in action.option_strings)
            if _takes_value(action):
                names += " " + _value(action, True)
        else:
            names = italic(_positional(action))
        text = _help(command.parser, action)
        if not text.endswith("."):
            text += _default_note(action, text) + "."
        out += [".TP", names, literals(text)]
    return out


# --- facts taken from the source -----------------------------------------------------------------


def exit_codes(module: ModuleType) -> list[tuple[str, str]]:
    """``Exit codes: 0 x, 1 y, 2 z.`` from a module docstring -> [("0", "x"), ...]."""
    doc = module.__doc__ or ""
    m = re.search(r"Exit codes:(.+?)(?:\n\s*\n|\Z)", doc, re.S)
    if not m:
        raise SystemExit(f"gen_manpage: no 'Exit codes:' paragraph in {module.__name__}")
    text = " ".join(m.group(1).split()).rstrip(".")
    items = re.split(r",\s+(?=\d+\s)", text)
    codes = []
    for item in items:
        code, _, meaning = item.strip().partition(" ")
        if not code.isdigit() or not meaning:
            raise SystemExit(f"gen_manpage: cannot read exit code {item!r} in {module.__name__}")
        codes.append((code, meaning))
    return codes


def module_constant(relpath: str, name: str) -> object:
    """A literal module-level constant, read without importing the module (xvmd.daemon.daemon
    pulls in libraries the generator does not need)."""
    tree = ast.parse((REPO / relpath).read_text(), relpath)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        value = getattr(node, "value", None)
        for target in targets:
            if isinstance(target, ast.Name) and target.id == name and value is not None:
                return ast.literal_eval(value)
    raise SystemExit(f"gen_manpage: {name} not found in {relpath}")


def _seconds(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return f"{number:g}"


# --- the page ------------------------------------------------------------------------------------


def tp(term: str, *body: str) -> list[str]:
    return [".TP", term, *body]


def render() -> str:
    xvmd, commands = load()
    ccs = _import("ccs")
    settings = _import("xvmd.daemon.settings")
    paths = _import("xvmd.daemon.paths")
    drain = _seconds(module_constant("xvmd/daemon/daemon.py", "DRAIN_TIMEOUT"))
    version = str(xvmd.__version__)
    conf = str(ccs.DEFAULT_CLUSTER_CONF)
    key = str(settings.DEFAULT_KEY_FILE)
    sock = str(paths.DEFAULT_CONTROL)
    trail = str(paths.DEFAULT_AUDIT)
    daemon, *subcommands = commands

    out: list[str] = [
        '.\\" Generated by contrib/man/gen_manpage.py from the argparse parsers; do not edit.',
        f'.TH XVMD 8 "" "xvmd {esc(version)}" "System Administration"',
        '.\\" Left-aligned, no hyphenation: option names and paths must stay whole.',
        ".ad l",
        ".nh",
        '.\\" The man macros turn hyphenation back on at every paragraph, from register HY.',
        ".nr HY 0",
        ".SH NAME",
        "xvmd \\- fence_xvm\\-compatible, cluster\\-aware host fencing daemon for libvirt guests",
        ".SH SYNOPSIS",
    ]
    for command in commands:
        out += synopsis(command)
    out += [
        ".SH DESCRIPTION",
        line(daemon.parser.description or ""),
        ".PP",
        line("xvmd runs on each KVM/libvirt host and answers the stock guest-side fence agent"),
        f"{bold('fence_xvm')}(8) byte for byte: a guest cluster (Pacemaker, or cman/rgmanager)",
        line(
            "sends a signed multicast request, xvmd connects back, both sides prove they hold "
            "the shared key, and xvmd powers the named libvirt domain off, on or through a "
            "reboot, then sends one result byte. It replaces"
        ),
        f"{bold('fence_virtd')}(8) and the old fence_xvmd.",
        ".PP",
        line(
            "In cluster mode (the default) the hosts form a corosync cluster of their own and "
            "power actions are carried out only while this host's partition is quorate, checked "
            "on every request. Unless"
        ),
        f"{bold('--no-ccs')} is given, xvmd reads the guest cluster's {italic(conf)},",
        line(
            "serves the fence_xvm devices whose key files are on this host, refuses requesters "
            "and targets outside the cluster, and follows edits of the file and the keys live, "
            "never acting on a broken file. Options given on the command line override"
        ),
        f"{bold('<fence_xvmd>')} in cluster.conf; option names follow fence_xvmd.",
        ".PP",
        line(
            "xvmd runs in the foreground and logs to standard error, one line per request "
            "(requester, operation, target, result, milliseconds); every request that reaches an "
            "action or a refusal is also appended to an audit trail. Under systemd it reports "
            "readiness, reloads and stopping, and sends watchdog pings."
        ),
        ".SH OPTIONS",
    ]
    out += options(daemon)
    out += [
        ".SH COMMANDS",
        line("The first argument may name a command instead of starting the daemon:"),
    ]
    for command in subcommands:
        out += [f'.SS "{esc(command.name)}"', line(command.parser.description or "")]
        out += options(command)
    out += [
        ".SH SIGNALS",
        *tp(
            bold("SIGHUP"),
            line(
                "Reload cluster.conf and the fence devices' key files now (systemctl reload "
                "xvmd). The files are also watched through inotify, so edits are picked up "
                "without a signal. A file with errors is rejected with every problem logged, "
                "and the last good configuration stays in force; a changed cluster.conf is "
                "applied only if its config_version increased; a changed key alone is a key "
                "rotation and applied at once. Listener settings (group, port, interface, "
                "hash, auth, URI) take effect only at the next start. With"
            ),
            f"{bold('--no-ccs')} SIGHUP re-reads the key file given with {bold('-k')} (a key "
            "rotation); a key that cannot be read is logged and the old one stays in force.",
        ),
        *tp(
            f"{bold('SIGTERM')}, {bold('SIGINT')}",
            line(
                "Stop: close the listeners so that no new request is accepted, wait up to "
                f"{drain} seconds for the requests in flight (drain), then exit with status 0."
            ),
        ),
        ".SH ENVIRONMENT",
        *tp(
            bold("NOTIFY_SOCKET"),
            line(
                "Set by systemd for Type=notify: xvmd sends READY=1 once its listeners are up "
                "and its configuration is loaded, RELOADING=1 and READY=1 around a reload, and "
                "STOPPING=1 on SIGTERM."
            ),
        ),
        *tp(
            f"{bold('WATCHDOG_USEC')}, {bold('WATCHDOG_PID')}",
            line(
                "Set by systemd for WatchdogSec=: xvmd's event loop sends WATCHDOG=1 every half "
                "interval, so a wedged daemon is restarted."
            ),
        ),
        *tp(
            bold("JOURNAL_STREAM"),
            line("When set (standard error goes to the journal), log lines carry no timestamp."),
        ),
        *tp(
            f"{bold(paths.RUN_DIR_ENV)}, {bold(paths.STATE_DIR_ENV)}",
            line(
                f"The directories of the default control sockets ({paths.RUN_DIR}) and audit "
                f"trails ({paths.STATE_DIR}), for the daemon and its commands alike; for tests and "
                "unusual layouts."
            ),
        ),
        ".SH FILES",
        *tp(
            italic(conf),
            line(
                "The guest cluster's configuration: nodes, one fence_xvm device and key per "
                "host, node to VM mapping, and <fence_xvmd> daemon settings (-f names another)."
            ),
        ),
        *tp(
            italic(key),
            line(
                "The shared key with --no-ccs (-k names another), and the default key_file of a "
                "fence device. With cluster.conf the keys are the served devices' key_file "
                "files; a relative key_file is relative to cluster.conf's directory. Keys are "
                "raw bytes, at most 4096 used, and should be mode 0600."
            ),
        ),
        *tp(
            italic(sock),
            line(
                "The control socket (mode 0600) that xvmd status reads (--control); read-only, "
                "it changes nothing. A daemon started with --instance NAME uses "
                f"{paths.RUN_DIR}/xvmd-NAME.sock, one on another port P without it "
                f"{paths.RUN_DIR}/xvmd-P.sock."
            ),
        ),
        *tp(
            italic(trail),
            line(
                "The audit trail (--audit), one JSON line per request that reached an action or "
                "a refusal, mode 0600, append-only; a power action's record is on disk before "
                "its result is sent. Read it with xvmd audit. Named like the control socket: "
                f"{paths.STATE_DIR}/audit-NAME.jsonl, {paths.STATE_DIR}/audit-P.jsonl."
            ),
        ),
        *tp(
            italic("/etc/default/xvmd"),
            line("XVMD_OPTS: options that xvmd.service appends to the command line."),
        ),
        *tp(
            italic("/lib/systemd/system/xvmd.service"),
            line("The systemd unit (Type=notify, watchdog, reload by SIGHUP)."),
        ),
        *tp(
            italic("/lib/systemd/system/xvmd@.service"),
            line(
                "The template for several daemons on one host, one per guest cluster: xvmd@NAME "
                "runs xvmd --instance NAME with XVMD_OPTS from /etc/default/xvmd-NAME."
            ),
        ),
        *tp(
            italic("/etc/logrotate.d/xvmd"),
            line(
                "Weekly rotation of the audit trails by renaming (no copytruncate): xvmd notices "
                "the rename before its next record, or on SIGHUP, and opens a new file."
            ),
        ),
        ".SH EXIT STATUS",
    ]
    for command in commands:
        out.append(f'.SS "{esc(command.name)}"')
        for code, meaning in exit_codes(command.module):
            out += tp(bold(code), literals(meaning[:1].upper() + meaning[1:] + "."))
    out += [
        ".SH EXAMPLES",
        line("Check a configuration before deploying it, then run in cluster mode:"),
        ".PP",
        ".nf",
        ".RS",
        f"xvmd check\\-config \\-f {esc(conf)}",
        "xvmd \\-I virbr0",
        "xvmd status",
        ".RE",
        ".fi",
        ".PP",
        line("Without corosync, or like fence_virtd without cluster.conf:"),
        ".PP",
        ".nf",
        ".RS",
        "xvmd \\-\\-local \\-I virbr0",
        f"xvmd \\-\\-local \\-\\-no\\-ccs \\-k {esc(key)} \\-I virbr0 \\-U qemu:///system",
        ".RE",
        ".fi",
        ".PP",
        line("Two guest clusters on one host, each with its own key, cluster.conf and port:"),
        ".PP",
        ".nf",
        ".RS",
        "systemctl enable \\-\\-now xvmd@alpha xvmd@beta",
        "xvmd status \\-\\-instance beta",
        ".RE",
        ".fi",
        ".PP",
        line("Who fenced what in the last two hours:"),
        ".PP",
        ".nf",
        ".RS",
        "xvmd audit \\-\\-since 2h",
        ".RE",
        ".fi",
        ".SH SEE ALSO",
        ",\n".join(f".BR {esc(name)} ({section})" for name, section in SEE_ALSO),
    ]
    return "\n".join(_check(out)) + "\n"


def _check(lines: Iterable[str]) -> list[str]:
    out = [piece for entry in lines for piece in entry.split("\n")]
    for text in out:
        if not text.strip():
            raise SystemExit("gen_manpage: empty line in output (roff would print a blank)")
    return out


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
