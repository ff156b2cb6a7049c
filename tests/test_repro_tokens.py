"""S5's token padding as an option (issue 12, part 6): batches padded to l_max and SSMs that see
the padding, against ssmlit's default (batch-maximum padding, masked before every SSM)."""

import pytest
import torch
from fixtures_data import write_aan, write_listops

from ssmlit.data import AANDataModule, ListOpsDataModule, pad_collate
from ssmlit.models import SequenceModel


def test_reference_padding_pads_to_l_max_and_tells_the_model(tmp_path):
    write_listops(tmp_path)
    ref = ListOpsDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=2, padding="reference")
    ref.prepare_data()
    ref.setup()
    x, _, lengths = next(iter(ref.val_dataloader()[0]))
    assert x.shape == (2, 2048) and int(lengths.max()) < 100
    for row, n in zip(x, lengths):
        assert (row[n:] == 0).all() and row[n - 1] == ref.vocab.eos_id  # <pad> = 0 up to l_max
    assert ref.model_kwargs()["mask_padding"] is False
    default = ListOpsDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=2)
    default.prepare_data()
    default.setup()
    xd, _, ld = next(iter(default.val_dataloader()[0]))
    assert xd.shape == (2, int(ld.max())) and torch.equal(xd, x[:, : xd.shape[1]])
    assert "mask_padding" not in default.model_kwargs() and default.cache_path == ref.cache_path


def test_reference_padding_for_retrieval_pairs(tmp_path):
    write_aan(tmp_path)
    dm = AANDataModule(data_dir=tmp_path, l_max=64, batch_size=3, padding="reference")
    dm.prepare_data()
    dm.setup()
    x, _, lengths = dm.collate([dm.train_set[i] for i in range(3)])
    assert x.shape == (3, 2, 64) and lengths.shape == (3, 2)
    assert all((x[b, d, lengths[b, d]:] == 0).all() for b in range(3) for d in range(2))
    assert dm.model_kwargs()["mask_padding"] is False and dm.model_kwargs()["retrieval"] is True


@pytest.mark.parametrize("layer", ["s5", "s4d"])
def test_only_masked_models_ignore_how_much_padding_there_is(layer):
    torch.manual_seed(0)
    seqs = [torch.tensor([3, 4, 5, 2]), torch.tensor([4, 2])]
    lengths = torch.tensor([4, 2])

    def padded(L):
        x = torch.zeros(2, L, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
        return x

    for mask in (True, False):
        torch.manual_seed(0)
        model = SequenceModel(3, vocab_size=8, layer=layer, d_model=8, n_layers=2, mask_padding=mask,
                              ssm=dict(d_state=4, bidirectional=True)).eval()
        with torch.no_grad():
            short, long = model(padded(4), lengths), model(padded(40), lengths)
        if mask:
            assert torch.allclose(short, long, atol=1e-5)
        else:  # the backward scan carries the pad tokens' embedding into the valid steps
            assert (short - long).abs().max() > 1e-3


def test_padding_options_are_validated():
    with pytest.raises(ValueError, match=r"unknown token padding 'full'; choose one of \('batch', 'reference'\)"):
        ListOpsDataModule(padding="full")
    with pytest.raises(ValueError, match="mask_padding must be true or false, got 'no'"):
        SequenceModel(3, vocab_size=8, mask_padding="no")
    with pytest.raises(ValueError, match="does not fit the fixed padded length 3"):
        pad_collate([(torch.ones(5, dtype=torch.long), 0)], length=3)
