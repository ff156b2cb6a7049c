import os

import pytest
import torch

# Keep CPU tests deterministic in speed and avoid oversubscribing the 2-core CI machine under xdist.
# Under mutation testing (mutmut sets MUTANT_UNDER_TEST) tests run in processes forked from a warm
# server, and OpenMP's thread pool does not survive fork (the children hang): one thread there.
torch.set_num_threads(1 if "MUTANT_UNDER_TEST" in os.environ else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
