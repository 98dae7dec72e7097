"""Shared fixtures: small videos made with PyAV, random-weight checkpoints, the shared data folder."""

from pathlib import Path

import pytest
import torch

from ig65m.models import get_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: every test gets an empty $IG65M_HOME."""
    monkeypatch.setenv("IG65M_HOME", str(tmp_path_factory.mktemp("ig65m_home")))


@pytest.fixture(scope="session", autouse=True)
def _torch_backend():
    """The default backend is `auto`, which measures every backend on first use of a model: a
    user's choice, set for the whole session through $IG65M_BACKEND (as a user can), so that only
    the tests of backends (tests/test_backends.py, which ask for auto) pay for measuring."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IG65M_BACKEND", "torch")
        yield


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """Random R(2+1)D-34 8-frame weights saved as a .pth, loaded through the real --weights
    path (the pipeline does not care that they are random)."""
    torch.manual_seed(0)
    model, _ = get_model("r2plus1d_34_8_ig65m", "random")
    path = tmp_path_factory.mktemp("weights") / "r2plus1d_34_8.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: these small models run several times faster so on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data():
    """../shared/data beside the project; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
