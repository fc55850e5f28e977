import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test tensors are small: one intra-op thread is as fast, immune to OpenMP stalls when the two cores
    are shared, and matches the OMP_NUM_THREADS=1 subprocesses that some tests compare with bit for bit.
    RENDERSSL_THREADS=1 keeps the CLI verbs the tests call (and their subprocesses) at one thread too."""
    before, env = torch.get_num_threads(), os.environ.get("RENDERSSL_THREADS")
    torch.set_num_threads(1)
    os.environ["RENDERSSL_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("RENDERSSL_THREADS")
    else:
        os.environ["RENDERSSL_THREADS"] = env
