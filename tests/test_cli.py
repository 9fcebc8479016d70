"""Every command's --help lists its own flags, and a mistyped flag is answered with the
nearest of that command's flags."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(
))["project"]["scripts"]
OWN_FLAG = {"holstein-datagen": "workers", "holstein-train": "resume",
            "holstein-evaluate": "cost_batch", "holstein-export": "which"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300)


def test_train_help_lists_its_flags_and_the_presets_config_fields():
    out = run("tf_holstein.train", "--config", "deep_L32", "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "--resume: continue the run" in text and "--workdir" in text
    assert "the values of --config deep_L32" in text
    assert "    --split_steps = 2" in text and "    --L = 32" in text
    assert "    --kind = parc  (one of cnn, parc)" in text
    assert "    --stages = 3:1:0:500,3:2:0.004:500" in text
    for section in ("  data:", "  model:", "  train:"):
        assert section in text


@pytest.mark.parametrize("command, own, absent", [
    ("tf_holstein.evaluate", "--cost_batch", "--lr = "),
    ("tf_holstein.datagen", "--workers", "--lr = "),
    ("tf_holstein.export", "--which", "--lr = "),
])
def test_other_commands_list_their_own_flags(command, own, absent):
    out = run(command, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"  {own}: " in out.stdout and absent not in out.stdout


@pytest.mark.parametrize("command, typo, suggestion", [
    ("tf_holstein.evaluate", "--splt=val", "--split"),
    ("tf_holstein.train", "--weight_decy=1", "--weight_decay"),
    ("tf_holstein.train", "--chanels=8", "--channels"),
    ("tf_holstein.export", "--workdr=runs/x", "--workdir"),
])
def test_a_mistyped_flag_names_the_nearest_flag_of_that_command(command, typo, suggestion):
    out = run(command, typo)
    assert out.returncode != 0
    name = typo.split("=")[0]
    assert f"unknown flag {name}; did you mean {suggestion}" in out.stderr, out.stderr[-500:]


@pytest.mark.parametrize("flag", ["--eval_batch=0", "--chunk=0", "--cost_batch=0"])
def test_evaluate_names_the_flag_of_a_bad_size(flag, tmp_path):
    out = run("tf_holstein.evaluate", "--model", "exact", "--data", str(tmp_path),
              "--out", str(tmp_path / "out"), flag)
    assert out.returncode != 0
    name, value = flag.split("=")
    assert f"evaluate: error: {name} must be >= 1, got {value}" in out.stderr


def test_the_console_scripts_are_the_four_commands():
    assert set(SCRIPTS) == set(OWN_FLAG)


@pytest.mark.parametrize("script", sorted(OWN_FLAG))
def test_each_console_script_lists_its_own_flags(script):
    """A console script imports its command's module (not run as __main__) and calls its
    entry: --help still lists that command's own flags and docstring."""
    module, function = SCRIPTS[script].split(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = {script!r}; {function}()"
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"python -m {module}" in out.stdout.split("flags of this command:")[0]
    assert f"  --{OWN_FLAG[script]}: " in out.stdout, out.stdout
