"""A small S5 trained here on the embedded digits task, shared by the streaming and export tests."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ssmlit.models import SequenceModel


@functools.cache
def trained_digits() -> tuple[SequenceModel, torch.Tensor, torch.Tensor]:
    """``(model in eval mode, x_test float32 [270, 64, 1], y_test int64 [270])`` after 80 AdamW steps
    (a few seconds on a CPU); callers must not modify the model."""
    from ssmlit.data.digits import digits_split

    (x_train, y_train), _, (x_test, y_test) = digits_split(0)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SequenceModel(10, d_input=1, d_model=32, n_layers=2, ssm=dict(d_state=32, blocks=2, clip_eigs=True),
                          bn_momentum=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    with torch.enable_grad():  # callers may be inside no_grad
        for _ in range(80):
            idx = torch.randint(0, len(y_train), (32,), generator=gen)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x_test, y_test
