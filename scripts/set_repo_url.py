#!/usr/bin/env python
"""Point every Colab badge and clone URL at a new GitHub repository (after a fork or a rename).

Who it is for: instructors publishing the course under their own GitHub owner.
How to run, from the repository root:
    python scripts/set_repo_url.py https://github.com/OWNER/NAME
It rewrites pyproject.toml's [project.urls] Repository (the single source) and every occurrence of the old
URL and owner/name in README.md, modules/ and the notebooks; tests/labs/test_notebooks.py checks they agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def main(new_url: str) -> None:
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", new_url):
        sys.exit("usage: set_repo_url.py https://github.com/OWNER/NAME")
    old_url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    old_slug, new_slug = old_url.removeprefix("https://github.com/"), new_url.removeprefix("https://github.com/")
    files = [
        REPO / "pyproject.toml",
        REPO / "README.md",
        *(REPO / "modules").rglob("*.md"),
        *(REPO / "labs").rglob("*.ipynb"),
    ]
    for path in files:
        text = path.read_text()
        updated = text.replace(old_url, new_url).replace(f"github/{old_slug}/", f"github/{new_slug}/")
        if updated != text:
            path.write_text(updated)
            print("updated", path.relative_to(REPO))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
