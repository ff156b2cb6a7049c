import os

import pytest
import torch

# Keep CPU tests deterministic in speed and avoid oversubscribing the 2-core CI machine under xdist.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
