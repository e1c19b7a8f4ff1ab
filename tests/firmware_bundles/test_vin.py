import pytest

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import check_digit, make_vin, validate_vin


def test_known_north_american_vin_is_valid() -> None:
    assert validate_vin("1hgcm82633a004352") == "1HGCM82633A004352"


def test_wrong_check_digit_is_rejected_for_north_america() -> None:
    with pytest.raises(InvalidVin, match="check digit"):
        validate_vin("1HGCM82643A004352")


def test_european_vin_without_check_digit_is_accepted() -> None:
    assert validate_vin("WVWZZZ1JZXW000001") == "WVWZZZ1JZXW000001"


@pytest.mark.parametrize("bad", ["1HGCM82633A00435", "1HGCM82633A0043520", "1HGCM8263IA004352", "WVWZZZ1JZOW000001"])
def test_length_and_forbidden_letters(bad: str) -> None:
    with pytest.raises(InvalidVin):
        validate_vin(bad)


def test_make_vin_fills_check_digit() -> None:
    vin = make_vin("1FT", "EW1E8", "R", "K", 123)
    assert vin[8] == check_digit(vin)
    assert validate_vin(vin) == vin
