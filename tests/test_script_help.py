"""Every script's --help (pipelines/, scripts/) explains each argument and shows its default."""
import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*(ROOT / "pipelines").glob("*.py"), *(ROOT / "scripts").glob("*.py")])


def parser_of(path: Path, monkeypatch) -> argparse.ArgumentParser:
    """The parser the script's main builds, caught where it parses the command line."""
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    built = []

    def caught(parser, args=None, namespace=None):
        built.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    with pytest.raises(SystemExit):
        module.main([])
    return built[0]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_help_explains_every_argument_with_its_default(path, monkeypatch):
    parser = parser_of(path, monkeypatch)
    text = " ".join(parser.format_help().split())  # the --help, rewrapped into one line
    arguments = [action for action in parser._actions if action.dest != "help"]
    assert arguments and all(action.help for action in arguments), \
        [action.dest for action in arguments if not action.help]
    for action in arguments:
        if action.option_strings:
            assert f"(default: {action.default})" in text, action.dest
