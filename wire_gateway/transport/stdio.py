"""The gateway's own stdin and stdout as trio streams.

stdout is the MCP stream in stdio mode, so nothing else may ever write to fd 1:
`claim_stdout()` moves the real stdout to a private descriptor and points fd 1
(and sys.stdout) at stderr, so a stray print() in any library lands in the log
instead of corrupting the client's stream.
"""
from __future__ import annotations

import os
import sys

import trio

READ_SIZE = 65536


class StdioStreams:
    def __init__(self, stdin_fd: int, stdout_fd: int) -> None:
        # On a terminal, stdin and stdout share one file description: the second
        # FdStream would record "non-blocking" as the original mode. Keep our own
        # copies and the true modes so the user's shell gets a blocking tty back.
        self._restore = [(os.dup(fd), os.get_blocking(fd)) for fd in (stdin_fd, stdout_fd)]
        self.stdin = trio.lowlevel.FdStream(stdin_fd)
        self.stdout = trio.lowlevel.FdStream(stdout_fd)

    async def aclose(self) -> None:
        for stream in (self.stdin, self.stdout):
            try:
                await stream.aclose()
            except trio.BrokenResourceError:
                pass
        for fd, blocking in self._restore:
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass
            os.close(fd)
        self._restore = []


def claim_stdio() -> StdioStreams:
    """Take fds 0 and 1 for the protocol; route fd 1 and sys.stdout to stderr from now on."""
    stdin_fd = os.dup(0)
    stdout_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Close the original stdin: an inherited copy would keep the pipe open past our reader.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return StdioStreams(stdin_fd, stdout_fd)
