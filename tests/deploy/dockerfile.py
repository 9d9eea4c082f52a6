"""Just enough of the Dockerfile and .dockerignore formats to check what an image would run.

Only what docker/Dockerfile.* use: exec-form (JSON) ENTRYPOINT, CMD and HEALTHCHECK CMD,
``ENV key=value`` pairs, and COPY without ``--from``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV in order; ``$NAME``/``${NAME}`` expand against earlier values (unknown ones: kept)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), value)
        return values

    def exec_form(self, keyword: str) -> list[str]:
        args = self.last(keyword)
        assert args is not None, f"no {keyword} in stage {self.name}"
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{keyword} is not exec form"
        return value

    def command(self) -> list[str]:
        """What ``docker run IMAGE`` executes: ENTRYPOINT + CMD."""
        return self.exec_form("ENTRYPOINT") + self.exec_form("CMD")

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as {"interval": "10s"}, the exec-form command)."""
        args = self.last("HEALTHCHECK")
        assert args is not None, f"no HEALTHCHECK in stage {self.name}"
        match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(\[.*\])", args, re.DOTALL)
        assert match, f"HEALTHCHECK is not `[--option=value ...] CMD [exec form]`: {args}"
        options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
        return options, json.loads(match.group(2))

    def copy_sources(self) -> list[str]:
        """Build-context paths copied into this stage (COPY --from=... excluded)."""
        sources: list[str] = []
        for args in self.all("COPY"):
            parts = shlex.split(args)
            if any(part.startswith("--from") for part in parts):
                continue
            sources += [part for part in parts if not part.startswith("--")][:-1]
        return sources


def parse(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (KEYWORD, arguments)."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # comments (and directives) vanish, also inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{path}: dangling line continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def stage(stages: list[Stage], name: str) -> Stage:
    for candidate in stages:
        if candidate.name == name:
            return candidate
    raise AssertionError(f"no stage named {name}")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Docker's syntax (moby/patternmatcher): `**` any number of directories, `*` and `?` within one.
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


class DockerIgnore:
    """``.dockerignore`` as BuildKit applies it: the last matching pattern wins, and a pattern
    that matches a directory matches everything below it."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:].strip() if negate else line
            pattern = pattern.strip("/") or "."
            self.rules.append((negate, _pattern_regex(pattern)))

    def included(self, relpath: str) -> bool:
        parts = relpath.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negate, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not negate
        return not excluded
