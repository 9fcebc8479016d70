"""Command-line flags shared by the entry points: a named config plus one flag per field.

Every field of every config section is a flag of its own name (`--L 32`,
`--lr 3e-4`, `--stages 20:1:0.02:8192,40:8:0.02:8192`); unset flags keep the
preset's value. Defining them in one module lets datagen and train be
imported together.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from absl import flags

from tf_holstein.configs import PRESETS, Config, field_types, get_config

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
            raise ValueError(f"--{', --'.join(ignored)} do not apply to this command "
                             f"(it uses the {', '.join(sections)} settings)")
    return get_config(FLAGS.config, **overrides)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`, with a bad flag
    reported in one line: an unknown one with the list of config fields."""
    command = Path(argv[0]).stem
    try:
        return FLAGS(list(argv))
    except flags.UnrecognizedFlagError as e:
        fields = sorted(field for fields in _SECTIONS.values() for field in fields)
        sys.exit(f"{command}: error: unknown flag --{e.flagname}; the config fields are "
                 f"--{', --'.join(fields)} (--help lists every flag)")
    except flags.Error as e:
        sys.exit(f"{command}: error: {e}")
