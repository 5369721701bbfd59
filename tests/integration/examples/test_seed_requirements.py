"""The original README's ``pip install -r requirements.txt`` installs the gateway from the repository root."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_pip_install_requirements_txt_installs_the_gateway(tmp_path: Path) -> None:
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    pip = tmp_path / "venv" / "bin" / "pip"
    # --no-deps: the dependencies come from PyPI exactly as `make venv` gets them; this checks the file itself.
    subprocess.run(
        [str(pip), "install", "-q", "--no-deps", "-r", "requirements.txt"], cwd=REPO, check=True, timeout=300
    )
    listed = subprocess.run([str(pip), "show", "msa-gateway"], capture_output=True, text=True, check=True)
    assert "Name: msa-gateway" in listed.stdout
    assert (tmp_path / "venv" / "bin" / "msa-gateway").exists()
