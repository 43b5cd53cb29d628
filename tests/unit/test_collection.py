"""The default test run collects every test folder: pytest's built-in `norecursedirs` skips any
folder named `dist`, which once dropped tests/dist from every run without a word."""
import subprocess
import sys

from tests.conftest import REPO


def test_every_test_folder_is_collected_by_default():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", ""], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    collected = {line.split("/")[1] for line in out.stdout.splitlines() if line.startswith("tests/") and "::" in line}
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == {"dist", "faults", "golden", "learning", "smoke", "unit"}
    assert collected == folders
