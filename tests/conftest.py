import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test tensors are small: one intra-op thread is as fast, immune to OpenMP stalls when the two cores
    are shared, and matches the OMP_NUM_THREADS=1 subprocesses that some tests compare with bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
