"""The README's two-node demo, typed as printed: two real terminals (pseudo-terminals running
bash), the README's commands typed into them, each shell line typed at its node's prompt, and
what each shows compared with what the README says it shows.

Only the file id differs from the README's example (it commits to the push time): the id the
README shows is replaced, wherever it is typed, by the one bob's push printed. In what is shown,
ids, numbers and the home folder are compared by their shape, the rest word for word.

When the test runs as root with ``ip`` available, both terminals run in a network namespace of
their own (so the README's fixed ports are free whatever else runs here); otherwise on this
machine's loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.terminal import Terminal

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"
HEX_ID = re.compile(r"\b[0-9a-f]{8,64}\b")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class ShellStep:
    node: str
    command: str
    shows: list[str] = field(default_factory=list)


@dataclass
class Demo:
    terminals: list[list[str]]
    """The shell commands of each terminal, in order (comments dropped)."""
    steps: list[ShellStep]


def demo_section(text: str) -> str:
    start = text.index("## A two-node demo")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def parse_demo(text: str) -> Demo:
    section = demo_section(text)
    blocks = re.findall(r"```(sh|text)\n(.*?)```", section, flags=re.S)
    terminals: list[list[str]] = []
    steps: list[ShellStep] = []
    for kind, body in blocks:
        lines = body.rstrip("\n").split("\n")
        if kind == "sh":
            commands = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            terminals.append(commands)
            continue
        for line in lines:
            prompt = re.match(r"^([\w-]+)> (.*)$", line)
            if prompt:
                steps.append(ShellStep(prompt.group(1), prompt.group(2)))
            elif steps and line.strip():
                steps[-1].shows.append(line)
    return Demo(terminals, steps)


def node_of(commands: list[str]) -> str:
    """The peer id that a terminal's ``treedrive run`` starts."""
    for command in commands:
        found = re.search(r"treedrive run (?:--peer-id )?([\w-]+)", command)
        if found:
            return found.group(1)
    raise AssertionError(f"no 'treedrive run' in {commands}")


def shape(line: str, home: str) -> str:
    line = line.replace(home, "~")
    line = HEX_ID.sub("<id>", line)
    line = NUMBER.sub("<n>", line)
    return " ".join(line.split())


def test_readme_parses_into_two_terminals_and_shell_steps() -> None:
    demo = parse_demo(README.read_text())
    assert len(demo.terminals) == 2
    assert {node_of(t) for t in demo.terminals} == {"alice", "bob"}
    assert demo.steps
    assert {s.node for s in demo.steps} == {"alice", "bob"}


@contextlib.contextmanager
def namespace() -> Iterator[list[str]]:
    """A command prefix that runs in a fresh network namespace, or [] where there is none."""
    ip = shutil.which("ip")
    if os.geteuid() != 0 or ip is None:
        yield []
        return
    name = f"td-demo-{os.getpid()}"
    made = subprocess.run([ip, "netns", "add", name], capture_output=True, check=False)
    if made.returncode != 0:
        yield []
        return
    try:
        subprocess.run([ip, "netns", "exec", name, ip, "link", "set", "lo", "up"], check=True)
        yield [ip, "netns", "exec", name]
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


def stop_nodes(data_root: Path) -> None:
    """End the node processes this test's terminals started (their pids are in node.json)."""
    for run_file in data_root.glob("*/node.json"):
        with contextlib.suppress(Exception):
            os.kill(int(json.loads(run_file.read_text())["pid"]), signal.SIGTERM)


def test_the_two_node_demo_works_as_printed(tmp_path: Path) -> None:
    demo = parse_demo(README.read_text())
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TREEDRIVE_", "XDG_"))} | {
        "HOME": str(home),
        "TERM": "xterm",
        "PS1": "$ ",
        "LANG": "C.UTF-8",
    }
    data_root = home / ".local" / "share" / "treedrive"
    with namespace() as prefix:
        terms: dict[str, Terminal] = {}
        try:
            for commands in demo.terminals:
                name = node_of(commands)
                term = Terminal([*prefix, "bash", "--norc", "--noprofile", "-i"], env, str(home))
                terms[name] = term
                term.wait_for(r"\$ ")
                for command in commands:
                    term.mark()
                    term.type(command)
                    if "treedrive run" in command:
                        term.wait_for(rf"{name}> ", timeout=30)
                    else:
                        term.wait_for(r"\$ ")
            # bob joined through alice: wait until alice knows him
            alice, bob = terms["alice"], terms["bob"]
            assert "Traceback" not in bob.output
            _wait_for_peer(alice, "bob")
            ids: dict[str, str] = {}
            for step in demo.steps:
                term = terms[step.node]
                command = substitute(step.command, ids)
                term.mark()
                term.type(command)
                shown = _wait_shown(term, step, str(home))
                if command.startswith("push "):
                    [example] = [m for s in step.shows for m in HEX_ID.findall(s)][:1]
                    printed = re.findall(r"\b[0-9a-f]{64}\b", shown)
                    assert printed, f"{command} printed no file id:\n{shown}"
                    ids[example] = printed[0]
                    _wait_for(lambda f=ids[example]: (data_root / "alice" / "blobs" / f).exists())
                if command.startswith("delete "):
                    gone = [data_root / n / "blobs" / i for n in terms for i in ids.values()]
                    _wait_for(lambda gone=gone: not any(p.exists() for p in gone))
                got = {shape(line, str(home)) for line in shown.split("\n")}
                for line in step.shows:
                    assert shape(line, str(home)) in got, (
                        f"{step.node}> {command}: README shows {line!r}; the terminal showed:\n"
                        f"{shown}"
                    )
            for term in terms.values():
                assert "Traceback" not in term.output
            # Both nodes ran with their dashboards, on different ports.
            urls = {n: json.loads((data_root / n / "node.json").read_text())["http"] for n in terms}
            assert urls["alice"] != urls["bob"]
            for name, url in urls.items():
                _http_ok(prefix, url, name)
        finally:
            for term in terms.values():
                with contextlib.suppress(OSError):
                    term.type("exit")
            time.sleep(0.5)
            stop_nodes(data_root)
            for term in terms.values():
                term.close()


def _wait_shown(term: Terminal, step: ShellStep, home: str, timeout: float = 60) -> str:
    """What the step's command showed once every line the README shows for it is there and the
    prompt is back (a log line printed meanwhile redraws the prompt, so the first prompt after
    the command is not its end); what was shown by the timeout otherwise."""
    want = {shape(line, home) for line in step.shows}
    prompt = re.compile(rf"\n{step.node}> ")
    deadline = time.monotonic() + timeout
    while True:
        shown = term.since_mark()
        got = {shape(line, home) for line in shown.split("\n")}
        if (prompt.search(shown) and want <= got) or time.monotonic() > deadline:
            return shown
        time.sleep(0.05)


def _wait_for_peer(term: Terminal, peer: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        term.mark()
        term.type("peers")
        term.wait_for(r"\n\w+> ")
        if re.search(rf"^{peer}\s", term.since_mark(), flags=re.M):
            return
        time.sleep(0.5)
    raise AssertionError(f"{peer} never joined:\n{term.output[-2000:]}")


def _wait_for(done: Callable[[], bool], timeout: float = 20) -> None:
    """The README's next step needs what this one sets going (bob's push sends alice a copy;
    the owner's DELETE reaches alice) to have happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.1)
    raise AssertionError(f"the step's effect did not come within {timeout} s")


def substitute(command: str, ids: dict[str, str]) -> str:
    """``command`` with each start of an example id replaced by the same start of the real one."""

    def swap(found: re.Match[str]) -> str:
        token = found.group(0)
        for example, real in ids.items():
            if example.startswith(token):
                return real[: len(token)]
        return token

    return HEX_ID.sub(swap, command)


def _http_ok(prefix: list[str], url: str, name: str) -> None:
    if not prefix:
        with urllib.request.urlopen(url + "api/status", timeout=5) as resp:  # noqa: S310
            assert json.loads(resp.read())["peer_id"] == name
        return
    code = (
        "import json,sys,urllib.request;"
        "print(json.loads(urllib.request.urlopen(sys.argv[1],timeout=5).read())['peer_id'])"
    )
    out = subprocess.run(
        [*prefix, "python3", "-c", code, url + "api/status"],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    assert out.stdout.strip() == name
