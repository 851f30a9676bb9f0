"""The shell on this process's terminal: a thread that reads command lines and runs them on the
node's event loop.

In a terminal (stdin and stdout both one) the lines come from GNU readline: line editing, and a
history kept in the data dir (``shell-history``, 0600). Log lines and the shell's own messages
never break the prompt: while it is shown, what the log handlers on the terminal write is handed
to the reading thread, which clears the input line, prints the text and redraws the prompt with
what the user had typed (readline's own redisplay, cursor where it was). Every readline call is
made by that one thread, between two keystrokes: readline is not thread-safe. Elsewhere (pipes,
a script) lines are read with plain ``os.read``, one answer per command, in order.

Stopping: ``exit``, Ctrl-D or the end of the input stop the node; SIGINT and SIGTERM stop it
while a line is being read (the reading thread holds no interpreter lock while it waits)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

from treedrive.core.text import printable, printable_lines
from treedrive.shell import COMMANDS, ExitShell, Shell

if TYPE_CHECKING:
    from treedrive.core.node import Node

HISTORY_FILE = "shell-history"
HISTORY_LENGTH = 1000
CLEAR_LINE = "\r\x1b[2K"

_INPUT_HOOK = ctypes.CFUNCTYPE(ctypes.c_int)


def read_lines(fd: int) -> Iterator[str]:
    """Lines from ``fd`` with plain ``os.read``: unlike ``input()``, a thread blocked here
    holds no interpreter lock, so the process exits cleanly while it waits."""
    pending = b""
    while chunk := os.read(fd, 4096):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace")


class Readline:
    """GNU readline for the reading thread: history, completion of command names, and a hook
    that the thread runs about ten times a second while it waits for a key (``PyOS_InputHook``),
    in which it prints what arrived for the terminal and redraws the prompt."""

    def __init__(self, module: ModuleType, history: Path | None) -> None:
        self.rl = module
        self.history = history
        lib = ctypes.CDLL(module.__file__)  # the extension module: readline's C functions
        self._on_new_line = lib.rl_on_new_line
        self._redisplay = lib.rl_redisplay
        self._hook_slot = ctypes.c_void_p.in_dll(ctypes.pythonapi, "PyOS_InputHook")
        self._hook: Any = None

    @classmethod
    def load(cls, history: Path | None) -> Readline | None:
        """Readline, if this Python has GNU readline (not libedit); else None."""
        try:
            import readline
        except ImportError:
            return None
        if "libedit" in (readline.__doc__ or ""):
            return None  # its redisplay functions differ
        try:
            return cls(readline, history)
        except (OSError, AttributeError, ValueError):
            return None

    def setup(self, on_prompt: Callable[[], None], on_wait: Callable[[], None]) -> None:
        rl = self.rl
        rl.set_auto_history(False)  # added by remember(): no blank lines, no repeats
        rl.set_history_length(HISTORY_LENGTH)
        rl.set_completer(self._complete)
        rl.set_completer_delims(" \t")
        rl.parse_and_bind("tab: complete")
        rl.set_pre_input_hook(on_prompt)
        if self.history is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(self.history, os.O_WRONLY | os.O_CREAT, 0o600))
                self.history.chmod(0o600)
                rl.read_history_file(self.history)
                rl.write_history_file(self.history)  # at most HISTORY_LENGTH lines kept

        def hook() -> int:
            with contextlib.suppress(Exception):  # never raise into readline's C loop
                on_wait()
            return 0

        self._hook = _INPUT_HOOK(hook)
        self._hook_slot.value = ctypes.cast(self._hook, ctypes.c_void_p).value

    def teardown(self) -> None:
        """No more hook calls (the thread may stay blocked in readline until the process ends)."""
        self._hook_slot.value = None
        self.rl.set_pre_input_hook(None)

    def redraw(self) -> None:
        """The prompt and the line typed so far, on a new line (cursor where it was). Only in
        the reading thread."""
        self._on_new_line()
        self._redisplay()

    def remember(self, line: str) -> None:
        rl = self.rl
        if not line.strip():
            return
        last = rl.get_current_history_length()
        if last and rl.get_history_item(last) == line:
            return
        rl.add_history(line)
        if self.history is not None:
            with contextlib.suppress(OSError):
                rl.append_history_file(1, self.history)

    def _complete(self, text: str, state: int) -> str | None:
        if self.rl.get_line_buffer()[: self.rl.get_begidx()].strip():
            return None  # only the command name
        found = [c for c in COMMANDS if c.startswith(text)]
        return found[state] + " " if state < len(found) else None


class PromptLine:
    """Output to the terminal around the shell's prompt. While the prompt is shown, text is
    queued for the reading thread (:meth:`flush_pending`, run from readline's hook), which
    prints it above the prompt; otherwise it is written at once."""

    def __init__(self, out: TextIO, redraw: Callable[[], None] | None) -> None:
        self.out = out
        self.redraw = redraw
        self.lock = threading.Lock()
        self.shown = False
        self._pending: list[tuple[TextIO, str]] = []

    def write(self, stream: TextIO, text: str) -> None:
        """Write ``text`` (whole lines) to ``stream``, above the prompt if it is shown."""
        if text and not text.endswith("\n"):
            text += "\n"
        with self.lock:
            if self.shown and self.redraw is not None:
                self._pending.append((stream, text))
                return
            self.out.flush()
            stream.write(text)
            stream.flush()

    def say(self, text: str) -> None:
        self.write(self.out, printable_lines(text))

    def showing(self) -> None:
        with self.lock:
            self.shown = True

    def hidden(self) -> None:
        """The prompt is gone (a line was entered): what was queued is written now."""
        with self.lock:
            self.shown = False
            self._write_pending()

    def flush_pending(self) -> None:
        """In the reading thread, while readline waits: queued text above the prompt."""
        with self.lock:
            if not self._pending or not self.shown or self.redraw is None:
                return
            self.out.write(CLEAR_LINE)
            self._write_pending()
            self.redraw()

    def _write_pending(self) -> None:
        for stream, text in self._pending:
            self.out.flush()
            stream.write(text)
            stream.flush()
        self._pending.clear()


class _AbovePrompt:
    """A log handler's stream that writes through :class:`PromptLine`."""

    def __init__(self, prompt: PromptLine, stream: TextIO) -> None:
        self.prompt = prompt
        self.stream = stream

    def write(self, text: str) -> int:
        self.prompt.write(self.stream, text)
        return len(text)

    def flush(self) -> None:
        pass  # PromptLine flushes what it writes

    def isatty(self) -> bool:
        return self.stream.isatty()


def _terminal_handlers() -> list[logging.StreamHandler[Any]]:
    """The root logger's handlers that write to this process's stdout or stderr."""
    found = []
    for handler in logging.getLogger().handlers:
        if (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and handler.stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
        ):
            found.append(handler)
    return found


class Console:
    """The shell of ``node`` on this process's stdin/stdout, in a thread; sets ``stop`` when
    the user ends it. :meth:`close` (before the node stops) ends the background gets and gives
    the terminal back as it was."""

    def __init__(self, node: Node, stop: asyncio.Event, history: Path | None = None) -> None:
        self.node = node
        self.stop = stop
        self.loop = asyncio.get_running_loop()
        stdin, stdout = sys.stdin, sys.stdout
        self.interactive = stdin.isatty()
        self.readline = Readline.load(history) if self.interactive and stdout.isatty() else None
        self.prompt_text = f"{printable(node.peer_id)}> " if self.interactive else ""
        self.prompt = PromptLine(stdout, self.readline.redraw if self.readline else None)
        self.shell = Shell(node, background=self.readline is not None, say=self.prompt.say)
        self._closing = False
        self._termios: list[Any] | None = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def start(self) -> None:
        if self.readline is not None:
            with contextlib.suppress(termios.error, OSError):
                self._termios = termios.tcgetattr(sys.stdin.fileno())
            self.readline.setup(self.prompt.showing, self.prompt.flush_pending)
            for handler in _terminal_handlers():
                old = handler.setStream(_AbovePrompt(self.prompt, handler.stream))
                self._handlers.append((handler, old))
            target: Callable[[], None] = self._read_with_readline
        else:
            target = self._read_plain
        threading.Thread(target=target, name="shell", daemon=True).start()

    async def close(self) -> None:
        self._closing = True
        await self.shell.close()
        for handler, old in self._handlers:
            handler.setStream(old)
        self._handlers.clear()
        if self.readline is not None:
            self.readline.teardown()
        with self.prompt.lock:
            if self.prompt.shown:
                self.prompt.out.write("\n")  # leave the prompt's line as it is
                self.prompt.out.flush()
                self.prompt.shown = False
        if self._termios is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._termios)

    # -- the reading thread -----------------------------------------------------------------------
    def _run(self, line: str) -> bool:
        """Run one line on the loop and print its answer; False once the shell should end."""
        if self._closing:
            return False
        future = asyncio.run_coroutine_threadsafe(self.shell.execute(line), self.loop)
        try:
            out = future.result()
        except (ExitShell, concurrent.futures.CancelledError):  # exit, or the node is stopping
            return False
        except Exception as exc:  # the shell never dies of one command
            out = printable_lines(f"error: {exc}")
        if out:
            self.prompt.say(out)
        return not self._closing

    def _end(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the node is stopping anyway
            self.loop.call_soon_threadsafe(self.stop.set)

    def _read_with_readline(self) -> None:
        assert self.readline is not None
        try:
            while not self._closing:
                try:
                    line = input(self.prompt_text)
                except EOFError:  # Ctrl-D
                    self.prompt.hidden()
                    self.prompt.write(self.prompt.out, "\n")
                    break
                self.prompt.hidden()
                self.readline.remember(line)
                if not self._run(line):
                    break
        except (OSError, RuntimeError):
            pass
        self._end()

    def _read_plain(self) -> None:
        say = self.prompt.out.write
        try:
            say(self.prompt_text)
            self.prompt.out.flush()
            for line in read_lines(sys.stdin.fileno()):
                if not self._run(line):
                    break
                say(self.prompt_text)
                self.prompt.out.flush()
        except (OSError, RuntimeError):
            pass  # stdin closed, or the loop is gone: the node is stopping anyway
        self._end()
