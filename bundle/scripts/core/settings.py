"""Settings given on the command line of ``python -m monai.bundle run``.

``flag``: ``--amp true`` hands the config the *string* "true" (fire reads only Python literals, so True
is a bool but true is not), and the string "false" is truthy. Every boolean setting is read through it.
``check_command_line``: MONAI applies any ``--key value`` as an override, so a misspelt key (``--lr``
for ``--learning_rate``) would silently change nothing; every entry of the configs calls it first.
``number``: a numeric setting, or one error naming it (``--learning_rate abc`` arrives as a string).
"""

from __future__ import annotations

import ast
import os
import sys

__all__ = ["flag", "check_command_line", "number"]

# the options of ``monai.bundle run`` itself (monai.bundle.scripts.run), not config overrides
RUNNER_OPTIONS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")

_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False, "on": True, "off": False}


def flag(value, name: str) -> bool:
    """``value`` as a bool: a bool, 0/1, or true/false (yes/no, on/off) in any case; anything else is
    refused with the setting's name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def _command_line_options(argv) -> dict:
    """``{name: value}`` of the ``--name value`` / ``--name=value`` options after ``run``."""
    options, tokens = {}, list(argv)
    for k, token in enumerate(tokens):
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            options[name] = value if value else (tokens[k + 1] if k + 1 < len(tokens) else "")
    return options


def _config_files(value: str) -> list:
    value = value.strip()
    files = ast.literal_eval(value) if value.startswith(("[", "(")) else value.split(",")
    return [os.path.expanduser(str(f)) for f in files]


def check_command_line(argv=None) -> None:
    """Refuse, before any work, an override that names no key of the configs (``--lr abc``, ``--hu_ragne``).

    Only under ``python -m monai.bundle run``: other callers (``cli.py``, tests parsing a config) check
    their own options. A nested key (``--components#bypass``) must exist down to its last part.
    """
    argv = sys.argv if argv is None else list(argv)
    if not argv or not argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py") or "run" not in argv:
        return
    options = _command_line_options(argv[argv.index("run") + 1 :])
    if not options.get("config_file"):
        return
    from monai.bundle import ConfigParser

    files = _config_files(options["config_file"])
    parser = ConfigParser(ConfigParser.load_config_files(files))
    unknown = [name for name in options if name not in RUNNER_OPTIONS and name not in parser]
    if unknown:
        raise ValueError(f"--{unknown[0]}: no setting of that name in {', '.join(files)} (misspelt?); nothing was run.")


def number(value, name: str, kind: type = float, low: float | None = None, high: float | None = None):
    """``value`` as ``kind`` within [low, high], or one error naming the setting."""
    try:
        converted = kind(value)
        valid = not isinstance(value, bool) and (kind is not int or converted == value)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if (low is not None and converted < low) or (high is not None and converted > high):
        bounds = (
            f"between {low:g} and {high:g}"
            if low is not None and high is not None
            else (f"at least {low:g}" if low is not None else f"at most {high:g}")
        )
        raise ValueError(f"{name}: must be {bounds}, got {value!r}")
    return converted
