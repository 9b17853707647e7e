"""Fail with one sentence when this interpreter's packages differ from constraints.txt.

CI installs through the lock, so a difference means the cached venv drifted (something installed by
hand, a pin the resolver could not honour): the tests would then run on versions users do not get.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "constraints.txt"
#: Installer tooling and the project itself: not part of what the lock pins.
NOT_PINNED = {"pip", "setuptools", "wheel", "kdcompress"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.split(";")[0].strip()
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    problems = [
        f"{name} {installed[name]} (the lock pins {version})"
        for name, version in sorted(pins.items())
        if name in installed and installed[name] != version
    ]
    problems += [
        f"{name} missing (the lock pins {pins[name]})" for name in sorted(pins) if name not in installed
    ]
    problems += [
        f"{name} {installed[name]} (not in the lock)"
        for name in sorted(installed)
        if name not in pins and name not in NOT_PINNED
    ]
    if problems:
        more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
        print(
            f"The venv at {sys.prefix} differs from constraints.txt: {problems[0]}{more}; delete it so "
            ".ci/run rebuilds it from the lock, or regenerate the lock with scripts/update_lock.sh.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
