"""settings.flag: booleans from the command line, where fire leaves true/false as strings."""

import pytest

from scripts.core.settings import flag


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), (" TRUE ", True),
    ("no", False), ("on", True), ("0", False),
])
def test_flag_reads_booleans_and_their_words(value, expected):
    assert flag(value, "amp") is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, None, 0.5, [True]])
def test_flag_refuses_anything_else_by_name(value):
    with pytest.raises(ValueError, match=r"^compile must be true or false, got "):
        flag(value, "compile")
