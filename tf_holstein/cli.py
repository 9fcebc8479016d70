"""Command-line flags shared by the entry points: a named config plus one flag per field.

Every field of every config section is a flag of its own name (`--L 32`,
`--lr 3e-4`, `--stages 20:1:0.02:8192,40:8:0.02:8192`); unset flags keep the
preset's value. Defining them in one module lets datagen and train be
imported together.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

from absl import app, flags

from tf_holstein.configs import PRESETS, Config, field_types, get_config
from tf_holstein.configs.base import CHOICES

FLAGS = flags.FLAGS
_SECTIONS = field_types(next(iter(PRESETS.values())))
_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           bool: flags.DEFINE_bool, tuple: flags.DEFINE_string}

flags.DEFINE_string("config", "shallow", f"named experiment: {', '.join(sorted(PRESETS))}")
flags.DEFINE_string("data_dir", "data", "parent directory of the dataset directories")
flags.DEFINE_bool("progress", True, "show progress bars")
for _section, _fields in _SECTIONS.items():
    for _field, _kind in _fields.items():
        _DEFINE[_kind](_field, None, f"override {_section}.{_field} of the config"
                       + (" (epochs:n_step:noise:batches_per_epoch,...)" if _kind is tuple
                          else ""))


def config_from_flags(sections: Sequence[str] | None = None) -> Config:
    """The `--config` preset with every set field flag applied.

    sections: the config sections this command uses; setting a field of another
    section is an error rather than silently ignored.
    """
    overrides = {field: FLAGS[field].value for fields in _SECTIONS.values() for field in fields
                 if FLAGS[field].value is not None}
    if sections is not None:
        ignored = sorted(f for s, fields in _SECTIONS.items() if s not in sections
                         for f in fields if f in overrides)
        if ignored:
            uses = f"it uses the {', '.join(sections)} settings" if sections else \
                "it reads no config fields"
            raise ValueError(f"--{', --'.join(ignored)} do not apply to this command ({uses})")
    return get_config(FLAGS.config, **overrides)


def config_fields(config: Config) -> dict[str, bool | int | float | str]:
    """Every field of a config by `section.field`, valued as its flag takes it (stages as
    epochs:n_step:noise:batches_per_epoch,...)."""
    return {f"{section}.{field}": ",".join(map(str, value)) if isinstance(value, tuple)
            else value
            for section, fields in _SECTIONS.items() for field in fields
            for value in [getattr(getattr(config, section), field)]}


# The config sections each command reads; a command not listed reads them all (train).
COMMAND_SECTIONS = {"datagen": ("data",), "evaluate": (), "netcdf": (), "export": ()}
SHARED = ("config", "data_dir", "progress")
HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def _sections(command: str) -> tuple[str, ...]:
    return COMMAND_SECTIONS.get(command, tuple(_SECTIONS))


def _preset_name(argv: Sequence[str]) -> str:
    """The --config given in argv (before parsing), else the flag's default."""
    for k, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and k + 1 < len(argv):
            return argv[k + 1]
    return FLAGS["config"].default


def _describe(flag: flags.Flag) -> str:
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    return f"  --{flag.name}: {flag.help}{default}"


def _own_flags(module: ModuleType, argv: Sequence[str]) -> list[flags.Flag]:
    """The flags the command's module defines, by name. absl files them under the module's
    name, or under argv[0] for the module run as __main__ (`python -m`)."""
    key = argv[0] if module.__name__ == "__main__" else module.__name__
    return sorted(FLAGS.get_flags_for_module(key), key=lambda flag: flag.name)


def _command(module: ModuleType) -> str:
    """The command's name, its module's (`python -m tf_holstein.train`, `holstein-train`)."""
    return Path(module.__file__).stem


def help_text(module: ModuleType, argv: Sequence[str]) -> str:
    """The command's --help: its docstring, its own flags with their defaults, the shared
    flags, and the config fields it reads, by section, with the chosen preset's values."""
    command = _command(module)
    lines = [(module.__doc__ or "").strip(), "", "flags of this command:"]
    lines += [_describe(flag) for flag in _own_flags(module, argv)]
    lines += ["", "shared flags:"] + [_describe(FLAGS[name]) for name in SHARED]
    sections = _sections(command)
    if sections:
        name = _preset_name(argv)
        try:
            preset = get_config(name)
        except (KeyError, ValueError):
            return "\n".join(lines + ["", f"unknown --config {name}; presets: "
                                      f"{', '.join(sorted(PRESETS))}"])
        lines += ["", f"config fields (each a flag; the values of --config {name}):"]
        values = config_fields(preset)
        for section in sections:
            lines.append(f"  {section}:")
            for field in _SECTIONS[section]:
                choices = f"  (one of {', '.join(CHOICES[field])})" if field in CHOICES else ""
                lines.append(f"    --{field} = {values[f'{section}.{field}']}{choices}")
    lines += ["", "--helpfull also lists absl's and TensorFlow's own flags."]
    return "\n".join(lines)


def parse_flags(module: ModuleType, argv: Sequence[str]) -> list[str]:
    """absl's flag parsing for the command of `module`: `--help` prints `help_text`, and a
    bad flag is reported in one line, an unknown one with the nearest of this command's
    flags."""
    command = _command(module)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(module, argv))
        sys.exit(0)
    try:
        return FLAGS(list(argv))
    except flags.UnrecognizedFlagError as e:
        own = [flag.name for flag in _own_flags(module, argv)]
        fields = [field for section in _sections(command) for field in _SECTIONS[section]]
        close = difflib.get_close_matches(e.flagname, [*own, *SHARED, *fields], n=3)
        hint = f"; did you mean --{', --'.join(close)}?" if close else ""
        sys.exit(f"{command}: error: unknown flag --{e.flagname}{hint} (--help lists this "
                 f"command's flags)")
    except flags.Error as e:
        sys.exit(f"{command}: error: {e}")


def _library_dirs() -> tuple[str, ...]:
    """The source folders of TensorFlow and Keras (not imported here: found on the path)."""
    specs = (importlib.util.find_spec(name) for name in ("tensorflow", "keras"))
    return tuple(location for spec in specs if spec for location in
                 spec.submodule_search_locations or ())


def _no_library_info(record: logging.LogRecord) -> bool:
    """False for an INFO line logged from TensorFlow's or Keras's own code (SavedModel
    signatures renaming inputs Q, P to q, p, assets and fingerprints written, the strategy's
    devices): they tell a user nothing. Warnings stay, and so do the commands' own lines."""
    return record.levelno >= logging.WARNING or not record.pathname.startswith(_LIBRARY_DIRS)


_LIBRARY_DIRS = _library_dirs()


def run(main: Callable[[list[str]], None]) -> None:
    """Runs a command's `main` under absl with this module's --help and flag messages: the
    entry of `python -m tf_holstein.X` and of the console script `holstein-X`."""
    for name in ("absl", "tensorflow"):  # the loggers TensorFlow's Python code logs through
        logging.getLogger(name).addFilter(_no_library_info)
    app.run(main, flags_parser=functools.partial(parse_flags, sys.modules[main.__module__]))
