import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["convert", "extract", "semcode", "dreamer", "index-build", "index-serve", "index-query"]


def test_hub_lists_the_four_ig65m_builders():
    hubconf = runpy.run_path(str(ROOT / "hubconf.py"))
    entries = {name for name, value in hubconf.items() if callable(value) and name[0] != "_"}
    assert hubconf["dependencies"] == ["torch", "torchvision"]
    assert {"r2plus1d_34_8_ig65m", "r2plus1d_34_32_ig65m", "r2plus1d_34_8_kinetics",
            "r2plus1d_34_32_kinetics"} <= set(entries)


def test_hub_builds_and_checks_the_released_head():
    model = torch.hub.load(str(ROOT), "r2plus1d_34_8_ig65m", source="local", num_classes=10)
    assert model.fc.out_features == 10
    assert model.layer2[0].conv2[0][0].out_channels == 288
    with pytest.raises(ValueError, match="359"):
        torch.hub.load(str(ROOT), "r2plus1d_34_8_ig65m", source="local", num_classes=10,
                       pretrained=True)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_in_the_group(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_console_scripts_are_the_group_commands():
    from ig65m.cli import COMMANDS as GROUP
    text = (ROOT / "setup.py").read_text()
    assert '"ig65m = ig65m.cli:main"' in text
    for name in COMMANDS:
        module, attribute = GROUP[name]
        assert f'"{name} = {module}:{attribute}"' in text


def test_light_commands_start_without_torch():
    """semcode and index-serve, and (issue 14) `ig65m --help` and `ig65m models`."""
    code = ("import sys; from click.testing import CliRunner; from ig65m.cli import main; "
            "[CliRunner().invoke(main, [name, '--help']) for name in ('semcode', 'index-serve')]; "
            "assert all(CliRunner().invoke(main, args).exit_code == 0 "
            "for args in (['--help'], ['models'])); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_launcher_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bin" / "ig65m"), "--help"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "extract" in out.stdout
