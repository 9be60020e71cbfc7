"""Switches given on the command line: ``python -m monai.bundle run ... --amp true`` hands the config
the *string* "true" (fire reads only Python literals, so True is a bool but true is not), and the
string "false" is truthy. Every boolean setting is read through ``flag``."""

from __future__ import annotations

__all__ = ["flag"]

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
