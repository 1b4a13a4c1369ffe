import subprocess
import sys

from vlm_rlaif import __version__
from vlm_rlaif.cli import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "vlm_rlaif.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "vlm_rlaif.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "vlm-rlaif" in out.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 1
    assert "usage" in capsys.readouterr().out
