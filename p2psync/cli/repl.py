"""The command prompt on stdin of `p2psync run`: reading lines, the terminal.

Three layers, each testable alone: `parse_command` (repl_commands.py) turns a
line into a command value (pure), `execute` (repl_execute.py) runs one command
against a NodeService and renders the answer, and `serve_repl` here reads
stdin in worker threads so that a silent terminal never holds up the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import termios
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

from p2psync.cli.repl_commands import ParseError, parse_command
from p2psync.cli.repl_execute import execute
from p2psync.node.service import NodeService

if TYPE_CHECKING:
    # trio.TaskStatus: under mypy, trio's types come from trio-typing's stubs
    # (a dependency of py-libp2p), which spell it trio_typing.TaskStatus.
    from trio_typing import TaskStatus

PROMPT = "p2psync> "
HISTORY_LENGTH = 1000

log = logging.getLogger(__name__)


# Typed loosely because trio-typing's stale stubs do not know abandon_on_cancel
# (trio >= 0.23), while trio itself no longer accepts the old `cancellable`.
_run_in_worker_thread: Callable[..., Awaitable[str]] = trio.to_thread.run_sync


async def serve_repl(
    service: NodeService,
    *,
    stdin: TextIO | None = None,
    history_path: Path | None = None,
    out: Callable[[str], None] | None = None,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read and run commands until `quit`, end of input, or cancellation.

    End of input on a terminal means the user pressed Ctrl-D: stop the node.
    End of input on a pipe or file only ends the REPL; the node runs on.
    """
    input_stream = sys.stdin if stdin is None else stdin
    write = out if out is not None else _print_to_stdout
    interactive = _is_terminal(input_stream)
    read_line = (
        _terminal_reader(input_stream, history_path) if interactive else input_stream.readline
    )
    task_status.started()
    with _terminal_restored_on_exit(input_stream if interactive else None):
        while True:
            # abandon_on_cancel: a thread blocked on a silent stdin must not delay
            # shutdown; trio's worker threads are daemon threads, so exit proceeds.
            line = await _run_in_worker_thread(read_line, abandon_on_cancel=True)
            if not line:
                if interactive:
                    write("")
                    await service.stop()
                else:
                    log.info("stdin closed: REPL ends, the node keeps running")
                return
            if not await _handle_line(service, line, write):
                return


async def _handle_line(service: NodeService, line: str, write: Callable[[str], None]) -> bool:
    try:
        command = parse_command(line)
    except ParseError as error:
        write(f"error: {error}")
        return True
    if command is None:
        return True
    try:
        return await execute(service, command, write)
    except Exception:
        # A bug behind one command must not take the node (and its peers' syncs) down.
        log.exception("REPL command %r failed", line.strip())
        write("error: internal error (details in the log)")
        return True


def _print_to_stdout(text: str) -> None:
    print(text, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_reader(stream: TextIO, history_path: Path | None) -> Callable[[], str]:
    """A blocking read of one line with a prompt; '' at end of input."""
    line_editor = _load_line_editor(history_path) if _is_process_stdin(stream) else None

    def read_with_line_editing() -> str:
        try:
            line = input(PROMPT)
        except EOFError:
            return ""
        if line_editor is not None and history_path is not None and line.strip():
            with contextlib.suppress(OSError):
                line_editor.append_history_file(1, str(history_path))
        return line + "\n"

    def read_with_prompt() -> str:
        sys.stdout.write(PROMPT)
        sys.stdout.flush()
        return stream.readline()

    # input() reads the process's stdin only; another terminal gets a plain prompt.
    return read_with_line_editing if _is_process_stdin(stream) else read_with_prompt


def _is_process_stdin(stream: TextIO) -> bool:
    try:
        return stream is sys.stdin or stream.fileno() == sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return False


def _load_line_editor(history_path: Path | None) -> Any:
    try:
        import readline
    except ImportError:  # Python built without readline: input() still works, unedited
        return None
    readline.set_history_length(HISTORY_LENGTH)
    if history_path is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history_path)
        with contextlib.suppress(OSError):
            # Creating it now lets append_history_file work from the first line.
            history_path.touch(mode=0o600, exist_ok=True)
    return readline


@contextlib.contextmanager
def _terminal_restored_on_exit(terminal: TextIO | None) -> Iterator[None]:
    """Put the terminal back as found: an abandoned readline may have it in raw mode."""
    saved_mode = None
    if terminal is not None:
        with contextlib.suppress(OSError, ValueError, termios.error):
            saved_mode = termios.tcgetattr(terminal.fileno())
    try:
        yield
    finally:
        if terminal is not None and saved_mode is not None:
            with contextlib.suppress(OSError, ValueError, termios.error):
                termios.tcsetattr(terminal.fileno(), termios.TCSADRAIN, saved_mode)


__all__ = ["PROMPT", "serve_repl"]
