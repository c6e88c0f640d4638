"""Docs that cannot drift: every shell example of README.md and docs/*.md runs against one
real ``billstream dev`` stack, and what it prints is what the document shows
(tests/e2e/docs_examples.py says how examples are read)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import docs_examples as docs
from workers.devstack import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]  # what an example runs with: KEY, API, BASE and the stack's settings


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("docs-stack") / "state"
    env = {**os.environ, "BILLSTREAM_STATE_DIR": str(state), "BILLSTREAM_LOG_LEVEL": "WARNING"}
    for name in ("XDG_RUNTIME_DIR", "BILLSTREAM_DATABASE_URL", "BILLSTREAM_KAFKA_BOOTSTRAP"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "dev", "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = _banner(proc)
        base = banner["ingress"]
        yield Stack(
            {
                **env,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "KEY": banner["api key"],
                "API": base,
                "BASE": base,
                "BILLSTREAM_DATABASE_URL": banner["database"],
                "BILLSTREAM_KAFKA_BOOTSTRAP": banner["kafka"],
            }
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _banner(proc: subprocess.Popen[str], timeout_s: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    output: list[str] = []
    found: dict[str, str] = {}
    for line in proc.stdout:
        output.append(line)
        if m := re.match(r"\s+(ingress|api key|database|kafka)\s+(\S+)", line):
            found[m[1]] = m[2]
        if "Ctrl-C stops everything" in line:
            assert set(found) == {"ingress", "api key", "database", "kafka"}, "".join(output)
            return found
        assert time.monotonic() < deadline, "".join(output)
    raise AssertionError("billstream dev exited early:\n" + "".join(output))


@pytest.fixture(scope="module")
def readme(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """The README runs first: the other documents build on its meters ("see the README")."""
    return docs.run(ROOT / "README.md", stack.env, tmp_path_factory.mktemp("README"))


def test_the_readme_examples_run_as_documented(readme: str | None) -> None:
    assert readme is None, readme


@pytest.fixture(scope="module")
def documents(
    stack: Stack, readme: str | None, tmp_path_factory: pytest.TempPathFactory
) -> dict[Path, str | None]:
    """The other documents, all at once once the README has run: each builds on the README
    alone, never on another document (and the stack's CLI commands take seconds each)."""
    if readme is not None:
        return {}
    with ThreadPoolExecutor(len(DOCUMENTS) - 1) as pool:
        runs = {
            path: pool.submit(docs.run, path, stack.env, tmp_path_factory.mktemp(path.stem))
            for path in DOCUMENTS[1:]
        }
        return {path: run.result() for path, run in runs.items()}


@pytest.mark.parametrize("document", DOCUMENTS[1:], ids=lambda p: p.name)
def test_the_examples_run_as_documented(
    document: Path, readme: str | None, documents: dict[Path, str | None]
) -> None:
    assert readme is None, "the README's examples failed first"
    problem = documents[document]
    assert problem is None, problem


def test_every_skipped_example_says_why() -> None:
    blocks = [b for path in DOCUMENTS for b in docs.extract(path)]
    assert [p for b in blocks for p in b.problems] == []
    assert [b for b in blocks if b.skip is None], "no example runs"


# -- the extractor, on a document of its own ----------------------------------------------

SAMPLE = """# A page

```sh
KEY=bsk_…   # printed by billstream dev
curl -s -X POST $API/v1/things -H "Authorization: Bearer $KEY" -d '{
    "a": 1}'
# 202 {"id":"th_…","status":"pending",…}
echo '{"n": [1, 2, 3], "t": "x"}'
# {"n":[1,…],
#  "t":"x"}
```

<!--
  docs-test: skip — needs Docker (compose)
-->
```bash
docker compose up -d
```

```python
print("not shell")
```

  - in a list:

    <!-- docs-test: skip -->
    ```console
    rm -rf /
    ```
"""


def test_the_extractor_finds_shell_blocks_their_markers_and_documented_outputs(
    tmp_path: Path,
) -> None:
    page = tmp_path / "page.md"
    page.write_text(SAMPLE)
    run, compose, listed = docs.extract(page)
    assert (run.line, run.skip, compose.skip, listed.info) == (
        3,
        None,
        "needs Docker (compose)",
        "console",
    )
    assert listed.lines == ["rm -rf /"]
    assert listed.problems == ["page.md:27: a skipped example needs a reason"]

    code, found = docs.checks(run)
    assert code[0][1].startswith(": # set by the test: KEY=")
    post, echo = found
    assert (
        post.line == 5
        and post.command.startswith("curl -s -X POST")
        and post.command.endswith("1}'")
    )
    assert (post.expected.line, post.expected.status) == (7, 202)
    assert echo.command == """echo '{"n": [1, 2, 3], "t": "x"}'"""
    assert echo.expected.text == '{"n":[1,…],\n  "t":"x"}'


@pytest.mark.parametrize(
    ("documented", "got", "problem"),
    [
        ('{"id":"th_…","status":"pending",…}', '{"id":"th_1","status":"pending","x":1}', None),
        (
            '{"id":"th_…","status":"pending"}',
            '{"id":"th_1","status":"pending","x":1}',
            "$: not documented: ['x']",
        ),
        ('{"id":"th_…"}', '{"id":"ep_1"}', '$.id: expected "th_…", got "ep_1"'),
        ('{"data":[{…}, …],"next":…}', '{"data":[{"a":1},{"b":2}],"next":null}', None),
        ('{"data":[{…}, …]}', '{"data":[]}', "$.data: expected at least 1 items, got 0"),
        ('{"v":120}', '{"v":121}', "$.v: expected 120, got 121"),
        ('{"v":"120"}', '{"v":120}', '$.v: expected "120", got 120'),
        ("{…}", '{"a":1} {"b":2}', "expected one JSON value, got 2"),
    ],
)
def test_documented_json_is_compared_by_structure(
    documented: str, got: str, problem: str | None
) -> None:
    expected = docs.Output(1, documented, None, True)
    assert docs.compare(expected, got, 200) == problem


def test_a_documented_status_and_listing_are_checked() -> None:
    assert (
        docs.compare(docs.Output(1, "{…}", 202, True), "{}", 200)
        == "HTTP status: expected 202, got 200"
    )
    listing = docs.Output(1, "   a.json  b.json  ...", None, False)
    assert docs.compare(listing, "a.json\nb.json\nc.json\n", None) is None
    assert docs.compare(listing, "a.json\n", None) == "missing ['b.json']"
    exact = docs.Output(1, "   a.json  b.json", None, False)
    assert docs.compare(exact, "a.json\nb.json\nc.json\n", None) == "not documented: ['c.json']"


BROKEN = """# Broken

```sh
N=$(echo 41)
echo "{\\"n\\": $((N + 1)), \\"at\\": \\"now\\"}"
# {"n":42,"at":"…"}
echo '{"n": 41}'
# {"n":42}
```
"""


def test_a_wrong_output_fails_naming_the_file_line_command_expected_and_got(
    tmp_path: Path,
) -> None:
    page = tmp_path / "broken.md"
    page.write_text(BROKEN)
    (tmp_path / "work").mkdir()
    problem = docs.run(page, {"PATH": os.environ["PATH"]}, tmp_path / "work", poll_s=0)
    assert problem is not None
    assert problem.startswith(
        f"{page}:7: the output is not as documented ($.n: expected 42, got 41)"
    )
    assert "command:\necho '{\"n\": 41}'\n" in problem
    assert 'documented (line 8):\n{"n":42}\ngot:\n{"n": 41}' in problem


def test_a_failing_command_fails_naming_its_line(tmp_path: Path) -> None:
    page = tmp_path / "failing.md"
    page.write_text("```bash\ntrue\nfalse\necho never\n```\n")
    (tmp_path / "work").mkdir()
    problem = docs.run(page, {"PATH": os.environ["PATH"]}, tmp_path / "work")
    assert problem is not None
    assert problem.startswith(f"{page}:3: false: the example failed (exit 1)")
