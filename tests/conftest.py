"""Shared fixtures: small videos made with PyAV, random-weight checkpoints, the shared data folder."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: every test gets an empty $IG65M_HOME."""
    monkeypatch.setenv("IG65M_HOME", str(tmp_path_factory.mktemp("ig65m_home")))


@pytest.fixture
def shared_data():
    """../shared/data beside the project; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
