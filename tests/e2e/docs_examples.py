"""The shell examples of README.md and docs/*.md, as a test runs them.

A fenced block whose info string is ``sh``, ``bash``, ``shell`` or ``console`` is an
example. It is run unless an HTML comment right before its fence says why not::

    <!-- docs-test: skip — needs Docker (compose) -->

The examples of one file run in order in one ``bash -euo pipefail`` (they share
variables and functions), with ``KEY``, ``API`` and ``BASE`` set to the dev stack's, and
``BILLSTREAM_DATABASE_URL`` and ``BILLSTREAM_KAFKA_BOOTSTRAP`` to its servers; a line of an
example that sets one of those (``KEY=bsk_…``, ``export BILLSTREAM_KAFKA_BOOTSTRAP=…``) is
left out.

Comment lines right after a command that start with ``# {``, ``# [``, ``# 202 {`` (an HTTP
status, then JSON) or ``#   `` (indented text) are the command's documented output.
JSON is compared structurally: ``…`` (or ``...``) stands for any value where a value
goes, for any further keys in an object, for any further items in a list, and for any
characters inside a string. An object without ``…`` has exactly the keys shown. Indented
text is compared word by word (``...`` allows more words). A ``curl`` answering 4xx or
5xx fails the example unless its documented output shows that status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHELLS = frozenset({"sh", "bash", "shell", "console"})
SET_BY_TEST = re.compile(
    r"^(export\s+)?(KEY|API|BASE|BILLSTREAM_DATABASE_URL|BILLSTREAM_KAFKA_BOOTSTRAP)="
)
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
_SKIP = re.compile(
    r"<!--\s*docs-test:\s*(?P<what>\S+)\s*[\u2014\u2013:-]?\s*(?P<reason>.*?)\s*-->", re.S
)
_OUTPUT_START = re.compile(r"^#(?: (?P<status>[1-5]\d\d))? ?(?=[{\[])|^#(?= {2,}\S)")


@dataclass(frozen=True)
class Output:
    """A command's documented output."""

    line: int  # in the document, 1-based
    text: str  # without the leading ``#`` and the status
    status: int | None
    is_json: bool


@dataclass
class Check:
    """A command (its lines) and what the document says it prints."""

    line: int
    command: str
    expected: Output


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    lines: list[str]  # the content
    skip: str | None  # the reason, when it is not run
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def extract(path: Path) -> list[Block]:
    """Every shell block of a Markdown file, with its skip marker."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].lower()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        content = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : end]
        ]
        if info in SHELLS:
            block = Block(path, i + 1, info, content, None)
            _read_marker(block, lines, i)
            blocks.append(block)
        i = end + 1
    return blocks


def _read_marker(block: Block, lines: list[str], fence_index: int) -> None:
    j = fence_index - 1
    if j < 0 or not lines[j].rstrip().endswith("-->"):
        return
    start = j
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    comment = "\n".join(ln.strip() for ln in lines[max(start, 0) : j + 1])
    m = _SKIP.search(comment)
    if not m:
        return
    if m["what"] != "skip":
        block.problems.append(f"{block.where}: unknown docs-test marker {m['what']!r}")
        return
    block.skip = " ".join(m["reason"].split())
    if not block.skip:
        block.problems.append(f"{block.where}: a skipped example needs a reason")


def _complete(lines: list[str]) -> bool:
    """Whether these lines are complete shell commands (no open quote, brace, ``\\``)."""
    text = "\n".join(lines)
    if text.rstrip().endswith("\\"):
        return False
    return (
        subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
    )


def checks(block: Block) -> tuple[list[tuple[int, str]], list[Check]]:
    """The block's lines (document line, text) with settings of KEY/API/BASE left out, and
    each command with a documented output."""
    code: list[tuple[int, str]] = []
    found: list[Check] = []
    segment_start = 0  # index in ``code`` where the commands since the last output begin
    i = 0
    lines = block.lines
    while i < len(lines):
        text, number = lines[i], block.line + 1 + i
        m = _OUTPUT_START.match(text)
        after_command = (
            bool(code) and code[-1][1].strip() and not code[-1][1].lstrip().startswith("#")
        )
        if m and after_command and _complete([t for _, t in code]):
            taken, expected = _take_output(lines, i, m["status"])
            segment = code[segment_start:]
            k = _last_command_start(segment)
            command_lines = segment[k:]
            found.append(
                Check(
                    command_lines[0][0],
                    "\n".join(t for _, t in command_lines),
                    Output(number, *expected),
                )
            )
            code.append((number, f"__check {len(found) - 1}"))
            segment_start = len(code)
            i += taken
            continue
        code.append((number, ": # set by the test: " + text if SET_BY_TEST.match(text) else text))
        i += 1
    return code, found


def _take_output(
    lines: list[str], i: int, status: str | None
) -> tuple[int, tuple[str, int | None, bool]]:
    first = (
        re.sub(r"^#(?: [1-5]\d\d)? ?", "", lines[i], count=1)
        if status
        else lines[i][1:].lstrip(" ")
    )
    if first[:1] not in "{[":  # indented text: every comment line that follows
        body = [lines[i][1:]]
        n = 1
        while i + n < len(lines) and lines[i + n].startswith("#  "):
            body.append(lines[i + n][1:])
            n += 1
        return n, ("\n".join(body), int(status) if status else None, False)
    body = [first]
    n = 1
    while _depth("\n".join(body)) > 0 and i + n < len(lines) and lines[i + n].startswith("#"):
        body.append(lines[i + n][1:])
        n += 1
    return n, ("\n".join(body), int(status) if status else None, True)


def _depth(text: str) -> int:
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            escaped = not escaped and ch == "\\"
            if ch == '"' and not escaped:
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return 0
    return depth


def _last_command_start(segment: list[tuple[int, str]]) -> int:
    texts = [t for _, t in segment]
    for k in range(len(texts) - 1, -1, -1):
        line = texts[k].strip()
        if not line or line.startswith("#"):
            continue
        if k > 0 and texts[k - 1].rstrip().endswith("\\"):
            continue
        if _complete(texts[:k]):
            return k
    return 0


# -- documented output -------------------------------------------------------------------


class _Any:
    def __repr__(self) -> str:
        return "…"


ANY: Any = _Any()
_REST = "\x00rest"  # an object key: further keys allowed


@dataclass(frozen=True)
class Pattern:
    """A string with ``…`` in it."""

    text: str

    def matches(self, got: object) -> bool:
        if not isinstance(got, str):
            return False
        parts = re.split(r"…|\.\.\.", self.text)
        return re.fullmatch(".*".join(map(re.escape, parts)), got, re.S) is not None

    def __repr__(self) -> str:
        return json.dumps(self.text, ensure_ascii=False)


class _Parser:
    """JSON with ``…`` / ``...`` allowed as a value, an object member or a list item."""

    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0

    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1

    def ellipsis(self) -> bool:
        self.ws()
        for token in ("…", "..."):
            if self.text.startswith(token, self.i):
                self.i += len(token)
                return True
        return False

    def expect(self, ch: str) -> None:
        self.ws()
        if not self.text.startswith(ch, self.i):
            raise ValueError(f"expected {ch!r} at {self.i}: {self.text[self.i : self.i + 20]!r}")
        self.i += 1

    def peek(self, ch: str) -> bool:
        self.ws()
        return self.text.startswith(ch, self.i)

    def value(self) -> Any:
        if self.ellipsis():
            return ANY
        self.ws()
        if self.peek("{"):
            return self.obj()
        if self.peek("["):
            return self.arr()
        value, end = json.JSONDecoder().raw_decode(self.text, self.i)
        self.i = end
        if isinstance(value, str) and ("…" in value or "..." in value):
            return Pattern(value)
        return value

    def obj(self) -> dict[str, Any]:
        self.expect("{")
        out: dict[str, Any] = {}
        while not self.peek("}"):
            if self.ellipsis():
                out[_REST] = True
            else:
                key = self.value()
                if not isinstance(key, str):
                    raise ValueError(f"an object key at {self.i} is not a string")
                self.expect(":")
                out[key] = self.value()
            if not self.peek("}"):
                self.expect(",")
        self.expect("}")
        return out

    def arr(self) -> list[Any]:
        self.expect("[")
        out: list[Any] = []
        while not self.peek("]"):
            out.append(self.value())
            if not self.peek("]"):
                self.expect(",")
        self.expect("]")
        return out


def parse_expected(text: str) -> Any:
    """The documented JSON (trailing prose after it is ignored)."""
    return _Parser(text).value()


def mismatch(expected: Any, got: Any, path: str = "$") -> str | None:
    """Where ``got`` differs from the documented ``expected``, or None."""
    if expected is ANY:
        return None
    if isinstance(expected, Pattern):
        return (
            None
            if expected.matches(got)
            else f"{path}: expected {expected!r}, got {json.dumps(got)}"
        )
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{path}: expected an object, got {json.dumps(got)}"
        keys = [k for k in expected if k != _REST]
        if missing := [k for k in keys if k not in got]:
            return f"{path}: missing {missing}"
        if _REST not in expected and (extra := [k for k in got if k not in expected]):
            return f"{path}: not documented: {extra}"
        for k in keys:
            if problem := mismatch(expected[k], got[k], f"{path}.{k}"):
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"{path}: expected a list, got {json.dumps(got)}"
        if ANY in expected:
            cut = expected.index(ANY)
            head, tail = expected[:cut], [e for e in expected[cut + 1 :] if e is not ANY]
            if len(got) < len(head) + len(tail):
                return f"{path}: expected at least {len(head) + len(tail)} items, got {len(got)}"
            pairs = list(zip(head, got, strict=False)) + list(
                zip(tail, got[len(got) - len(tail) :], strict=True)
            )
            offsets = list(range(len(head))) + list(range(len(got) - len(tail), len(got)))
        else:
            if len(got) != len(expected):
                return f"{path}: expected {len(expected)} items, got {len(got)}"
            pairs, offsets = list(zip(expected, got, strict=True)), list(range(len(got)))
        for (e, g), n in zip(pairs, offsets, strict=True):
            if problem := mismatch(e, g, f"{path}[{n}]"):
                return problem
        return None
    if type(expected) is not type(got) and not (
        isinstance(expected, (int, float))
        and isinstance(got, (int, float))
        and not isinstance(got, bool)
    ):
        return f"{path}: expected {json.dumps(expected)}, got {json.dumps(got)}"
    return (
        None
        if expected == got
        else f"{path}: expected {json.dumps(expected)}, got {json.dumps(got)}"
    )


def compare(expected: Output, stdout: str, status: int | None) -> str | None:
    """None when the output is what the document shows, else why not."""
    if expected.status is not None and status != expected.status:
        return f"HTTP status: expected {expected.status}, got {status}"
    if not expected.is_json:
        want = expected.text.split()
        more = "..." in want or "…" in want
        want = [w for w in want if w not in ("...", "…")]
        got = stdout.split()
        if missing := [w for w in want if w not in got]:
            return f"missing {missing}"
        if not more and (extra := [w for w in got if w not in want]):
            return f"not documented: {extra}"
        return None
    try:
        documented = parse_expected(expected.text)
    except ValueError as e:
        return f"the documented output does not parse: {e}"
    values: list[Any] = []
    decoder, text, i = json.JSONDecoder(), stdout.strip(), 0
    while i < len(text):
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return "the output is not JSON"
        values.append(value)
        while i < len(text) and text[i].isspace():
            i += 1
    if len(values) != 1:
        return f"expected one JSON value, got {len(values)}"
    return mismatch(documented, values[0])


# -- running -----------------------------------------------------------------------------

PRELUDE = r"""
__at() { printf '%s\n' "$1" >> "$__OUT/failed_at"; }
trap '__at $LINENO' ERR
curl() {  # as documented, plus the HTTP status on the side
  local code
  command curl -w '%{stderr}%{http_code}\n' "$@" 2> "$__OUT/curl.err" || {
    cat "$__OUT/curl.err" >&2; return 1; }
  code=$(tail -n 1 "$__OUT/curl.err")
  printf '%s\n' "$code" >> "$__OUT/status"
  if [ "$code" -ge 400 ] && [ -z "${__EXPECT_ERROR:-}" ]; then
    echo "HTTP $code from: curl $*" >&2; return 22
  fi
}
__check() {  # run check $1's command (already defined as __cmd_$1) until it matches
  local deadline=$((SECONDS + __POLL_S))
  while :; do
    : > "$__OUT/status"
    if ! __EXPECT_ERROR=$(cat "$__OUT/$1.allow") "__cmd_$1" > "$__OUT/$1.out"; then
      if [ -e "$__OUT/$1.retry" ] && [ "$SECONDS" -lt "$deadline" ]; then sleep 0.5; continue; fi
      printf '%s\n' "$1" > "$__OUT/failed_check"; exit 4
    fi
    if "$__PYTHON" "$__CHECKER" "$__OUT" "$1"; then return 0; fi
    if [ ! -e "$__OUT/$1.retry" ] || [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s\n' "$1" > "$__OUT/mismatch"; exit 3
    fi
    sleep 0.5
  done
}
"""

_WRITES = re.compile(
    r"-X\s*(POST|PUT|PATCH|DELETE)|\s(-d|--data\S*)\s|\b(redrive|replay|export)\b(?!.*--dry-run)"
)


@dataclass
class Script:
    text: str
    checks: list[Check]
    lines: list[tuple[Path, int]]  # script line (1-based, index + 1) → document line


def script(path: Path, blocks: list[Block]) -> Script:
    """One bash script of a file's runnable blocks."""
    out: list[str] = []
    where: list[tuple[Path, int]] = []
    all_checks: list[Check] = []

    def emit(text: str, line: int) -> None:
        for part in text.split("\n"):
            out.append(part)
            where.append((path, line))

    emit("set -Eeuo pipefail" + PRELUDE, 0)
    for block in blocks:
        if block.skip is not None:
            continue
        code, found = checks(block)
        offset = len(all_checks)
        all_checks.extend(found)
        emit(f"# --- {block.where}", block.line)
        k = 0
        for number, text in code:
            if text.startswith("__check "):
                check = found[k]
                n = offset + k
                # the command becomes a function, defined and called where it stood
                body = check.command
                drop = len(body.split("\n"))
                del out[-drop:], where[-drop:]
                emit(f"__cmd_{n}() {{", check.line)
                for j, part in enumerate(body.split("\n")):
                    emit(part, check.line + j)
                emit("}", number)
                emit(f"__check {n}", number)
                k += 1
            else:
                emit(text, number)
    return Script("\n".join(out) + "\n", all_checks, where)


def write_checks(checks_: list[Check], out_dir: Path) -> None:
    for n, check in enumerate(checks_):
        (out_dir / f"{n}.expected.json").write_text(
            json.dumps(
                {
                    "text": check.expected.text,
                    "status": check.expected.status,
                    "json": check.expected.is_json,
                }
            )
        )
        (out_dir / f"{n}.allow").write_text("1" if (check.expected.status or 0) >= 400 else "")
        if not _WRITES.search(" " + check.command.replace("\\\n", " ") + " "):
            (out_dir / f"{n}.retry").write_text("")


def _check_main(out_dir: Path, n: int) -> int:
    spec = json.loads((out_dir / f"{n}.expected.json").read_text())
    expected = Output(0, spec["text"], spec["status"], spec["json"])
    statuses = (out_dir / "status").read_text().split()
    status = int(statuses[-1]) if statuses else None
    got = (out_dir / f"{n}.out").read_text()
    problem = compare(expected, got, status)
    if problem is None:
        return 0
    (out_dir / f"{n}.problem").write_text(problem)
    return 1


def describe(s: Script, out_dir: Path, returncode: int, stdout: str, stderr: str) -> str:
    """What went wrong, for a person: the file, the line, the command, expected and got."""
    if (out_dir / "mismatch").exists():
        n = int((out_dir / "mismatch").read_text())
        check = s.checks[n]
        problem = (
            (out_dir / f"{n}.problem").read_text() if (out_dir / f"{n}.problem").exists() else "?"
        )
        got = (out_dir / f"{n}.out").read_text() if (out_dir / f"{n}.out").exists() else ""
        return (
            f"{check.line and _rel(s, check)}: the output is not as documented ({problem})\n"
            f"command:\n{check.command}\n"
            f"documented (line {check.expected.line}):\n{check.expected.text}\n"
            f"got:\n{got.strip()}\n"
            f"stderr:\n{_tail(stderr, 2000)}"
        )
    place = "?"
    if (out_dir / "failed_check").exists():
        check = s.checks[int((out_dir / "failed_check").read_text())]
        place = f"{_rel(s, check)}: {check.command}"
    elif (out_dir / "failed_at").exists():
        for line in map(int, (out_dir / "failed_at").read_text().split()):
            if 0 < line <= len(s.lines) and s.lines[line - 1][1] > 0:
                path, number = s.lines[line - 1]
                place = f"{path}:{number}: {s.text.splitlines()[line - 1].strip()}"
                break
    return (
        f"{place}: the example failed (exit {returncode})\n"
        f"stdout:\n{_tail(stdout)}\nstderr:\n{_tail(stderr)}"
    )


def run(
    path: Path, env: dict[str, str], work: Path, timeout_s: float = 240, poll_s: int = 30
) -> str | None:
    """Run a file's examples in ``work``; None when they all ran as documented, else why not.
    A read whose output differs is tried again for ``poll_s`` seconds (async progress)."""
    blocks = extract(path)
    if problems := [p for b in blocks for p in b.problems]:
        return "\n".join(problems)
    s = script(path, blocks)
    out_dir = work / ".docs-test"
    out_dir.mkdir(parents=True)
    write_checks(s.checks, out_dir)
    (out_dir / "script.sh").write_text(s.text)
    full_env = {
        **env,
        "__OUT": str(out_dir),
        "__PYTHON": sys.executable,
        "__CHECKER": __file__,
        "__POLL_S": str(poll_s),
    }
    proc = subprocess.Popen(
        ["bash", str(out_dir / "script.sh")],
        cwd=work,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the commands too
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        done = [n for n in range(len(s.checks)) if (out_dir / f"{n}.out").exists()]
        at = f" at {_rel(s, s.checks[done[-1]])}: {s.checks[done[-1]].command}" if done else ""
        return (
            f"{path}: the examples did not finish within {timeout_s:.0f} s; the last command "
            f"with a documented output that ran was{at or ' none'}\n"
            f"stdout:\n{_tail(stdout, 2000)}\nstderr:\n{_tail(stderr, 2000)}"
        )
    if proc.returncode == 0:
        return None
    return describe(s, out_dir, proc.returncode, stdout, stderr)


def _tail(text: str, limit: int = 3000) -> str:
    """The end of a command's output, each line once (a retried command repeats itself)."""
    return "\n".join(dict.fromkeys(text.strip().splitlines()))[-limit:]


def _rel(s: Script, check: Check) -> str:
    path = s.lines[0][0]
    return f"{path}:{check.line}"


if __name__ == "__main__":
    sys.exit(_check_main(Path(sys.argv[1]), int(sys.argv[2])))
