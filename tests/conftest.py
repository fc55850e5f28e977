import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors run fastest on one intra-op thread, and are immune to OpenMP stalls on a busy
    2-core machine. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
