import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test tensors are small: one intra-op thread is as fast, immune to OpenMP stalls when the two cores
    are shared, and matches the OMP_NUM_THREADS=1 subprocesses that some tests compare with bit for bit.
    RENDERSSL_THREADS=1 keeps the CLI verbs the tests call (and their subprocesses) at one thread too, and
    RENDERSSL_WORKERS=0 their data loading in the process (a worker's start and stop cost seconds per run)."""
    before = torch.get_num_threads()
    saved = {k: os.environ.get(k) for k in ("RENDERSSL_THREADS", "RENDERSSL_WORKERS")}
    torch.set_num_threads(1)
    os.environ.update(RENDERSSL_THREADS="1", RENDERSSL_WORKERS="0")
    yield
    torch.set_num_threads(before)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v
