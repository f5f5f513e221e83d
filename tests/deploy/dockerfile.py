"""Reading the Dockerfile and .dockerignore the way the image build does, so that tests
can check what goes into the image without a Docker engine (there is none here).

Only the Dockerfile features this repository uses are understood: stages (`FROM ... AS`),
line continuations, ENV (`k=v` pairs, with `$VAR`/`${VAR}` expansion), COPY (shell and
JSON forms, `--from`), USER and WORKDIR; anything unexpected is an error, not a guess.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# What the base image (python:3.11-slim-bookworm) sets before our ENV lines.
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ENV, ...
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self, start: Mapping[str, str] = BASE_IMAGE_ENV) -> dict[str, str]:
        """The environment after this stage's ENV lines (expanded in order)."""
        result = dict(start)
        for instruction in self.all("ENV"):
            for key, value in _env_pairs(instruction.args):
                result[key] = _expand(value, result)
        return result

    def copies(self) -> list[Copy]:
        return [_copy(i.args) for i in self.all("COPY")]

    @property
    def workdir(self) -> str:
        dirs = self.all("WORKDIR")
        return dirs[-1].args.strip() if dirs else "/"

    @property
    def user(self) -> str | None:
        users = self.all("USER")
        return users[-1].args.strip() if users else None


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str
    from_stage: str | None  # None: from the build context


def parse(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    stages: list[Stage] = []
    for instruction in _instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(Stage(words[0], words[2]))
            elif len(words) == 1:
                stages.append(Stage(words[0], None))
            else:
                raise ValueError(f"unexpected FROM {instruction.args!r}")
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"{instruction.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages


def _instructions(text: str) -> Iterator[Instruction]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        yield Instruction(keyword.upper(), args.strip())
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")


def _env_pairs(args: str) -> list[tuple[str, str]]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # the legacy `ENV key value` form
        return [(words[0], " ".join(words[1:]))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"ENV {args!r}: {word!r} is not key=value")
        pairs.append((key, value))
    return pairs


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _copy(args: str) -> Copy:
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    rest = " ".join(w for w in words if not w.startswith("--"))
    paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    from_stage = None
    for flag in flags:
        name, _, value = flag[2:].partition("=")
        if name == "from":
            from_stage = value
        elif name not in ("chown", "chmod", "link"):
            raise ValueError(f"COPY flag {flag!r} is not understood here")
    if len(paths) < 2:
        raise ValueError(f"COPY {args!r} needs a source and a destination")
    return Copy(tuple(paths[:-1]), paths[-1], from_stage)


# -- .dockerignore ------------------------------------------------------------------


@dataclass(frozen=True)
class DockerIgnore:
    """Docker's rules: patterns match a path relative to the context root or any of its
    parent directories; `**` spans directories; the last matching pattern wins, and a
    leading `!` makes it an exception."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def read(cls, path: Path = ROOT / ".dockerignore") -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            if "\\" in pattern:
                raise ValueError(f"pattern {line!r} is not understood here")
            rules.append((exception, _pattern(pattern)))
        return cls(tuple(rules))

    def ignores(self, relative: str) -> bool:
        parts = relative.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        ignored = False
        for exception, pattern in self.rules:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                ignored = not exception
        return ignored


def _pattern(glob: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        elif glob[i] == "[":
            end = glob.index("]", i + 2)
            members = glob[i + 1 : end]
            negated = members[0] in "!^"
            members = re.escape(members[1:] if negated else members).replace("\\-", "-")
            out, i = out + (f"[^/{members}]" if negated else f"[{members}]"), end + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


def context_files(source: str, ignore: DockerIgnore, root: Path = ROOT) -> list[Path]:
    """The files of the build context that `COPY <source>` takes (relative paths)."""
    top = root / source
    if top.is_file():
        candidates = [top]
    else:
        candidates = sorted(p for p in top.rglob("*") if p.is_file() and not p.is_symlink())
    return [
        p.relative_to(root)
        for p in candidates
        if not ignore.ignores(p.relative_to(root).as_posix())
    ]


def image_files(stage: Stage, ignore: DockerIgnore, root: Path = ROOT) -> dict[str, Path]:
    """Where each file a stage copies from the build context lands in the image:
    image path -> path relative to the context root."""
    placed: dict[str, Path] = {}
    for copy in stage.copies():
        if copy.from_stage is not None:
            continue
        into_directory = copy.destination.endswith("/") or len(copy.sources) > 1
        destination = posixpath.normpath(posixpath.join(stage.workdir, copy.destination))
        for source in copy.sources:
            top = root / source
            for relative in context_files(source, ignore, root):
                if top.is_dir():
                    inside = (root / relative).relative_to(top).as_posix()
                    placed[posixpath.join(destination, inside)] = relative
                elif into_directory:
                    placed[posixpath.join(destination, relative.name)] = relative
                else:
                    placed[destination] = relative
    return placed
