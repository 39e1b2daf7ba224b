"""CI runs exactly the README's install and test commands."""

from __future__ import annotations

import re

from conftest import REPO


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_commands():
    ci = (REPO / ".ci" / "run").read_text()
    install, test = readme_block("Install"), readme_block("Test")
    assert install == 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test,dali]"'
    assert install in ci.splitlines() and test in ci.splitlines()
