"""The fenced blocks of the README's `## Walkthrough`, turned into one bash script.

The section's conventions (tests/e2e/test_readme_walkthrough.py relies on them):

- ```` ```bash ```` blocks are the steps; they run in order in ONE bash process, so shell
  variables carry over;
- a ```` ```python ```` block whose first line is a comment naming a file (``# watch.py: ...``)
  is that file: the script writes it to the working directory where it appears;
- ```` ```js ```` is the frontend snippet (the test checks that it parses);
- other blocks (```` ```sh ```` for the commands of the other terminals, ```` ```text ```` for
  sample output) are not run.

``python -m tests.readme_blocks [HOST:PORT]`` prints the script (for the service on
localhost:3001 unless told otherwise); ``scripts/walkthrough.sh`` runs it.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Walkthrough"
MARKER = "@@ "  # each step's output starts with a line `@@ <index> <heading>`
HEREDOC_END = "__WALKTHROUGH_FILE__"

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^### +(?P<title>.+?) *$", re.M)
_FILE_COMMENT = re.compile(r"^(?:#|//) *(?P<name>[\w.-]+\.\w+)\b")


@dataclass(frozen=True)
class Block:
    """A fenced block of the section: its language, its text, the `###` heading above it."""

    lang: str
    code: str
    heading: str

    @property
    def file_name(self) -> str | None:
        """The file a ```python``` (or ```js```) block says it is, on its first line."""
        match = _FILE_COMMENT.match(self.code)
        return match["name"] if match else None


def walkthrough_section(readme: str) -> str:
    """The text of `## Walkthrough`, up to the next `## ` heading."""
    start = readme.index(f"\n{SECTION}\n") + 1
    end = readme.find("\n## ", start + len(SECTION))
    return readme[start : end if end != -1 else len(readme)]


def blocks(section: str) -> list[Block]:
    """The fenced blocks of a section, in order."""
    headings = [(m.start(), m["title"]) for m in _HEADING.finditer(section)]
    found = []
    for fence in _FENCE.finditer(section):
        heading = ""
        for position, title in headings:
            if position < fence.start():
                heading = title
        found.append(Block(fence["lang"], fence["code"], heading))
    return found


def script(steps: list[Block]) -> str:
    """One bash script: the bash blocks in order, the named python files written on the way.

    Before each bash block it prints `@@ <index> <heading>` so the output can be split by step.
    """
    lines = ["set -euo pipefail"]
    for index, block in enumerate(steps):
        if block.lang == "python" and block.file_name:
            if HEREDOC_END in block.code:
                raise ValueError(f"{block.file_name} contains {HEREDOC_END}")
            lines += [
                f"cat > {shlex.quote(block.file_name)} <<'{HEREDOC_END}'",
                block.code.rstrip("\n"),
                HEREDOC_END,
            ]
        elif block.lang == "bash":
            lines += [
                f"echo {shlex.quote(f'{MARKER}{index} {block.heading}')}",
                block.code.rstrip("\n"),
            ]
    return "\n".join(lines) + "\n"


def split_output(output: str) -> dict[str, str]:
    """The script's output by step: heading -> what its bash block printed."""
    parts: dict[str, str] = {}
    heading = ""
    for line in output.splitlines(keepends=True):
        if line.startswith(MARKER):
            heading = line.removeprefix(MARKER).split(" ", 1)[-1].strip()
            parts[heading] = ""
        else:
            parts[heading] = parts.get(heading, "") + line
    return parts


def readme_script(replacements: dict[str, str] | None = None) -> tuple[str, list[Block]]:
    """The walkthrough's script and blocks, with text replaced first (e.g. host:port)."""
    section = walkthrough_section(README.read_text(encoding="utf-8"))
    for old, new in (replacements or {}).items():
        section = section.replace(old, new)
    steps = blocks(section)
    return script(steps), steps


if __name__ == "__main__":
    # An optional argument replaces localhost:3001, e.g. `127.0.0.1:8080`.
    service = {"localhost:3001": sys.argv[1]} if len(sys.argv) > 1 else {}
    sys.stdout.write(readme_script(service)[0])
