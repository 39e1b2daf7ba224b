"""benchmarks/gpu_checks.sh: it covers every CUDA-only test and stops cleanly where there is no GPU."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_checks.sh"


def cuda_only_tests() -> set[str]:
    """Node ids of the tests marked to skip without CUDA, read from the test files."""
    marker = re.compile(r"@pytest\.mark\.skipif\(not torch\.cuda\.is_available\(\).*\n(?:@.*\n)*def (\w+)")
    return {
        f"tests/{path.name}::{name}"
        for path in sorted((REPO / "tests").glob("test_*.py"))
        for name in marker.findall(path.read_text())
    }


def test_script_selects_every_cuda_only_test():
    text = SCRIPT.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("step cuda_tests")]
    args = shlex.split(line)
    pytest_args = args[args.index("pytest") + 1 :]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", *pytest_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    selected = {line for line in collected.splitlines() if "::" in line}
    assert len(cuda_only_tests()) >= 4 and selected == cuda_only_tests()


def test_script_stops_with_one_line_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("OUT", None)
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "logs")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("no CUDA device visible to torch")
    assert not list((tmp_path / "logs").iterdir())  # no step ran
