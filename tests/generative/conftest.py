from pathlib import Path

import pytest

TINY = Path(__file__).parent / "data" / "tiny_perov.csv"


@pytest.fixture(scope="session")
def tiny_csv() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_records():
    from generative.data import read_crystal_csv

    return read_crystal_csv(TINY).records
