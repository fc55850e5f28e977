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


@pytest.fixture(autouse=True, scope="session")
def compiled_extensions():
    """Build the C++ extensions side by side at the start (each takes ~30 s alone the first time; the
    tests that use them would otherwise build them one after another)."""
    from concurrent.futures import ThreadPoolExecutor

    from renderssl.data.point_ops_compiled import point_kernel
    from renderssl.eval.boundaries import compiled_module
    from renderssl.render.splat_compiled import compiled_kernel
    from renderssl.render.splat_prepare_compiled import prepare_kernel

    builds = (compiled_kernel, prepare_kernel, point_kernel, compiled_module)
    with ThreadPoolExecutor(len(builds)) as pool:
        list(pool.map(lambda build: build(), builds))

