"""The one grammar for layer and coefficient lists."""
import pytest

from bakesteer.errors import BakesteerError
from bakesteer.numbers import parse_coefs, parse_layers


@pytest.mark.parametrize("text,want", [("5", [5]), ("0,5,10", [0, 5, 10]), ("4-6,9", [4, 5, 6, 9]), (" 4 - 6", None),
                                       ("3-3", [3])])
def test_layer_lists(text, want):
    if want is None:
        with pytest.raises(BakesteerError, match="does not parse"):
            parse_layers(text)
    else:
        assert parse_layers(text) == want


@pytest.mark.parametrize("text,match", [("5-3", "runs backwards; write 3-5"), ("0-100000000", "more than any model"),
                                        ("-1", "does not parse"), ("a", "does not parse"), ("1,,2", "does not parse"),
                                        ("1.5", "does not parse")])
def test_bad_layer_lists(text, match):
    with pytest.raises(BakesteerError, match=match):
        parse_layers(text)


def test_coefficient_lists():
    assert parse_coefs("1,2,4") == [1.0, 2.0, 4.0]
    assert parse_coefs("-4,-0.5, 2") == [-4.0, -0.5, 2.0]
    for bad in ("nan", "inf", "1e999", "x", ""):
        with pytest.raises(BakesteerError, match="does not parse"):
            parse_coefs(bad)
