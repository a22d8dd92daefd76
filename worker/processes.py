"""`worker run --concurrency N`: N single-process workers under one parent.

Signals. A terminal's Ctrl-C is a SIGINT to its whole foreground process group. Children that
shared the parent's group got that signal AND the parent's forwarded copy: two signals, a cold
stop that abandons the job. So each child runs in its own session (out of the terminal's
group), and the parent forwards exactly one signal per signal it receives: the first is a warm
stop in every child (checkpoint, put the job back), a second is a cold stop. SIGHUP (the
terminal went away) is forwarded as SIGTERM, since the children no longer hear the terminal.
On Linux a child also gets SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a parent killed
outright never leaves orphans that train forever.

Exit status. 0 when every child exited 0; a child killed by a signal is a failure (1), never a
success; otherwise the highest child status (2 when a child found bad input).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from types import FrameType

log = logging.getLogger("spotsweep.worker")

FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_FAILURE = 1


def run_processes(count: int, argv: list[str], envs: list[dict[str, str]] | None = None) -> int:
    """Run `count` children `python -m worker <argv>`, forward signals, and return the exit
    status the parent should end with (see the module docstring). `envs`, when given, is each
    child's environment (one per child: `--per-gpu` pins each to its GPU); else the parent's."""
    environments = envs if envs is not None else [os.environ.copy() for _ in range(count)]
    children: list[subprocess.Popen[bytes]] = []
    _forward_signals(children)  # before the first child starts: no signal finds the parent deaf
    children.extend(_start_child(argv, env) for env in environments)
    codes = [child.wait() for child in children]  # a forwarded signal interrupts and resumes the wait
    return exit_status(codes, [child.pid for child in children])


def _start_child(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *argv], env=env,
        start_new_session=True,  # out of the terminal's process group: it hears only the parent
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def _die_with_parent() -> None:
    """In the child, before exec: a warm stop when the parent dies, whatever kills it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _forward_signals(children: list[subprocess.Popen[bytes]]) -> None:
    def forward(signum: int, frame: FrameType | None) -> None:
        sent = FORWARDED[signal.Signals(signum)]
        for child in children:
            child.send_signal(sent)  # one per signal received; a child that has exited is skipped

    for signum in FORWARDED:
        signal.signal(signum, forward)


def exit_status(codes: list[int], pids: list[int]) -> int:
    """0 if every child exited 0; 1 if any was killed by a signal (a negative Popen status);
    else the highest status. Each killed child is named in one log line."""
    for pid, code in zip(pids, codes):
        if code < 0:
            name = _signal_name(-code)
            log.error("worker process %d was killed by %s", pid, name, extra={"event": "child_killed", "reason": name})
    return max(EXIT_FAILURE if code < 0 else code for code in codes)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"
