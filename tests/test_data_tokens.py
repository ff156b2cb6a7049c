"""Token tasks on fixture trees: ListOps, Text (IMDB characters), Retrieval (AAN pairs)."""

import hashlib
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from fixtures_data import make_tar_gz, write_aan, write_imdb, write_listops

from ssmlit.data import AANDataModule, IMDBDataModule, ListOpsDataModule
from ssmlit.data import text as text_module
from ssmlit.data.download import ArchiveError, DataError, DataNotFoundError, Source
from ssmlit.data.listops import tokenize_listops
from ssmlit.data.tokens import build_vocab

SPECIALS = ["<pad>", "<unk>", "<eos>"]


def _decode(vocab, ids):
    return [vocab.itos[i] for i in ids]


def _forbid_rebuild(monkeypatch, cls):
    def boom(*a, **k):
        raise AssertionError("the cache was rebuilt")
    monkeypatch.setattr(cls, "build_cache", boom)
    monkeypatch.setattr(cls, "locate_raw", boom)


# -- ListOps ---------------------------------------------------------------------------------------
def test_listops_vocab_tokens_batches_and_cache(tmp_path, monkeypatch):
    rows = write_listops(tmp_path)
    dm = ListOpsDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    vocab = dm.vocab
    # specials first, then by descending train count, ties lexicographic; the digit 0 never occurs in train
    counts = Counter(t for src, _ in rows["train"] for t in tokenize_listops(src))
    assert vocab.itos[:3] == SPECIALS and vocab.itos[3] == "X" and counts["X"] == 8
    assert vocab.itos[3:] == [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    assert "0" not in vocab.stoi and dm.vocab_size == len(vocab) == 3 + 14
    assert dm.model_kwargs() == dict(d_input=None, vocab_size=17, d_output=10, retrieval=False)
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [6, 2, 2]

    x, y = dm.train_set[0]
    assert x.dtype == torch.long and _decode(vocab, x.tolist()) == ["[MAX", "2", "9", "X", "<eos>"]
    assert y == 9
    x, _ = dm.test_set[0]  # "( ( ( [MAX 0 ) 3 ) ] )": 0 is unknown
    assert x.tolist() == [vocab.stoi["[MAX"], 1, vocab.stoi["3"], vocab.stoi["X"], 2]

    xb, yb, lb = next(iter(dm.val_dataloader()[0]))
    assert xb.dtype == torch.long and yb.dtype == torch.long and lb.dtype == torch.long
    assert xb.shape == (2, int(lb.max())) and yb.tolist() == [r[1] for r in rows["val"]]
    for row, n in zip(xb, lb):
        assert row[n - 1] == vocab.eos_id and (row[n:] == 0).all() and (row[: n - 1] > 2).all()
    labels = torch.cat([b[1] for b in dm.train_dataloader()])
    assert sorted(labels.tolist()) == sorted(r[1] for r in rows["train"])

    # reload from the cache with the raw files gone, without re-tokenizing
    cache = dm.cache_path
    shutil.rmtree(tmp_path / "lra_release")
    _forbid_rebuild(monkeypatch, ListOpsDataModule)
    dm2 = ListOpsDataModule(data_dir=tmp_path, batch_size=4)
    dm2.prepare_data()
    dm2.setup()
    assert dm2.cache_path == cache and dm2.vocab.itos == vocab.itos
    assert torch.equal(dm2.test_set[1][0], dm.test_set[1][0])
    ids = np.load(cache / "train_ids.npy", mmap_mode="r")
    assert ids.dtype == np.uint8 and np.load(cache / "train_labels.npy").dtype == np.uint8


def test_listops_options_change_the_cache_and_bos(tmp_path):
    write_listops(tmp_path)
    plain = ListOpsDataModule(data_dir=tmp_path)
    bos = ListOpsDataModule(data_dir=tmp_path, append_bos=True, l_max=4)
    assert plain.cache_path != bos.cache_path
    bos.prepare_data()
    bos.setup()
    assert bos.vocab.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    x, _ = bos.train_set[0]  # [MAX 2 9 X truncated to l_max − 2 = 2 content tokens
    assert _decode(bos.vocab, x.tolist()) == ["<bos>", "[MAX", "2", "<eos>"]
    assert max(len(bos.train_set[i][0]) for i in range(len(bos.train_set))) <= 4


def test_listops_bad_header_is_an_error(tmp_path):
    write_listops(tmp_path)
    f = next(tmp_path.rglob("basic_val.tsv"))
    f.write_text("( [MAX 1 2 ] )\t2\n")
    dm = ListOpsDataModule(data_dir=tmp_path)
    with pytest.raises(DataError, match="Source<TAB>Target") as err:
        dm.prepare_data()
    assert str(f) in str(err.value) and not dm.cache_path.exists()


def test_missing_listops_names_files_url_and_place(tmp_path):
    dm = ListOpsDataModule(data_dir=tmp_path / "empty", download=False)
    with pytest.raises(DataNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "basic_train.tsv" in msg and "https://storage.googleapis.com/long-range-arena/lra_release.gz" in msg
    assert str((tmp_path / "empty").resolve()) in msg and "python -m ssmlit.data.listops" in msg


# -- Text (IMDB) -----------------------------------------------------------------------------------
def test_imdb_vocabulary_min_freq_ties_and_unknowns(tmp_path, monkeypatch):
    write_imdb(tmp_path)
    dm = IMDBDataModule(data_dir=tmp_path, batch_size=8)
    dm.prepare_data()
    dm.setup()
    # 'a' and 'b' 16× each (tie: lexicographic), 'c' 14× < min_freq 15
    assert dm.vocab.itos == [*SPECIALS, "a", "b"] and dm.vocab_size == 5
    assert dm.val_set is dm.test_set  # IMDB has no validation split: test doubles as val (s4, S5, LRA)
    assert [len(s) for s in (dm.train_set, dm.test_set)] == [4, 3]
    x, y = dm.test_set[2]  # test/pos/0: "abcz" (test files: neg then pos)
    assert y == 1 and x.tolist() == [3, 4, 1, 1, 2]
    xb, yb, lb = next(iter(dm.test_dataloader()[0]))
    assert xb.shape == (3, 5) and yb.tolist() == [0, 0, 1] and lb.tolist() == [4, 5, 5]
    assert dm.model_kwargs()["vocab_size"] == 5 and dm.model_kwargs()["d_output"] == 2

    low = IMDBDataModule(data_dir=tmp_path, min_freq=1)
    low.prepare_data()
    low.setup()
    assert low.vocab.itos == [*SPECIALS, "a", "b", "c", " ", "/", "<", ">", "r", "é"]
    assert low.test_set[0][0].tolist() == [4, 4, low.vocab.stoi["é"], 2]  # "bbé" (code points, not bytes)

    shutil.rmtree(tmp_path / "aclImdb")
    _forbid_rebuild(monkeypatch, IMDBDataModule)
    again = IMDBDataModule(data_dir=tmp_path)
    again.prepare_data()
    again.setup()
    assert again.vocab.itos == dm.vocab.itos and torch.equal(again.train_set[0][0], dm.train_set[0][0])


def test_imdb_truncation_counts_only_kept_characters_and_holdout(tmp_path):
    write_imdb(tmp_path)
    dm = IMDBDataModule(data_dir=tmp_path, l_max=5, min_freq=1, val_frac=0.5, seed=3)
    dm.prepare_data()
    dm.setup()
    # first 4 characters of each train review: aaaa, aaaa, aaaa, cccc -> 'b' is never counted
    assert dm.vocab.itos == [*SPECIALS, "a", "c"]
    lengths = [len(dm.train_set[i][0]) for i in range(len(dm.train_set))]
    assert max(lengths) == 5 and all(dm.train_set[i][0][-1] == 2 for i in range(len(dm.train_set)))
    assert len(dm.train_set) == len(dm.val_set) == 2 and dm.val_set is not dm.test_set
    dm2 = IMDBDataModule(data_dir=tmp_path, l_max=5, min_freq=1, val_frac=0.5, seed=3)
    dm2.setup()  # the cache exists already
    assert dm2.val_set.indices.tolist() == dm.val_set.indices.tolist()
    assert sorted(dm.train_set.indices.tolist() + dm.val_set.indices.tolist()) == [0, 1, 2, 3]


def test_imdb_download_extract_and_corrupt_archive(tmp_path, monkeypatch):
    src = tmp_path / "src"
    texts = write_imdb(src)
    archive = tmp_path / "aclImdb_v1.tar.gz"
    md5 = make_tar_gz(archive, src / "aclImdb", "aclImdb")
    monkeypatch.setattr(IMDBDataModule, "sources", (Source((archive.as_uri(),), "aclImdb_v1.tar.gz", md5=md5),))
    data = tmp_path / "data"
    dm = IMDBDataModule(data_dir=data, progress=False)
    dm.prepare_data()  # downloads (file://), verifies the MD5, extracts, caches
    dm.setup()
    assert (data / "downloads" / "aclImdb_v1.tar.gz").is_file() and (data / "aclImdb" / "train" / "pos").is_dir()
    assert len(dm.train_set) == sum(len(v) for v in texts["train"].values())

    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(archive.read_bytes()[:300])
    monkeypatch.setattr(IMDBDataModule, "sources", (Source((bad.as_uri(),), "aclImdb_v1.tar.gz"),))
    data2 = tmp_path / "data2"
    dm2 = IMDBDataModule(data_dir=data2, progress=False)
    with pytest.raises(ArchiveError) as err:
        dm2.prepare_data()
    assert str(data2 / "downloads" / "aclImdb_v1.tar.gz") in str(err.value)
    assert not (data2 / "cache").exists() and not (data2 / "aclImdb").exists()

    monkeypatch.setattr(IMDBDataModule, "sources",
                        (Source(((tmp_path / "nowhere.tar.gz").as_uri(),), "aclImdb_v1.tar.gz", md5="0" * 32),))
    dm3 = IMDBDataModule(data_dir=tmp_path / "data3", progress=False)
    with pytest.raises(DataNotFoundError, match="Automatic download failed") as err:
        dm3.prepare_data()
    assert "aclImdb/train/pos/*.txt" in str(err.value) and "nowhere.tar.gz" in str(err.value)


def test_imdb_source_is_the_stanford_archive():
    (src,) = text_module.IMDBDataModule.sources
    assert src.url == "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    assert src.md5 == "7c2ac02c03563afcf9b574c7e56c153a"


# -- Retrieval (AAN) -------------------------------------------------------------------------------
def test_aan_pairs_quotes_lengths_and_batches(tmp_path, monkeypatch):
    rows = write_aan(tmp_path)
    dm = AANDataModule(data_dir=tmp_path, batch_size=3)
    dm.prepare_data()
    dm.setup()
    train = rows["train"]
    counts = Counter(c for _, a, b in train for c in a + b)
    assert dm.vocab.itos[3:] == [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [4, 2, 2]  # quotes did not merge rows
    x, y, lengths = dm.train_set[1]
    assert y == 0 and lengths.tolist() == [len(train[1][1]) + 1, len(train[1][2]) + 1]
    assert "".join(_decode(dm.vocab, x[1, : lengths[1] - 1].tolist())) == 'He said "hi" twice'
    assert "".join(_decode(dm.vocab, x[0, : lengths[0] - 1].tolist())) == "On parsing"
    assert (x[0, lengths[0]:] == 0).all()
    assert dm.val_set[0][1] == 1  # label written as "1" parses too
    assert dm.model_kwargs()["retrieval"] is True

    xb, yb, lb = next(iter(dm.train_dataloader()))
    assert xb.dtype == torch.long and xb.shape[:2] == (3, 2) and xb.shape[2] == int(lb.max())
    assert lb.shape == (3, 2) and set(yb.tolist()) <= {0, 1}
    for pair, lens in zip(xb, lb):
        for doc, n in zip(pair, lens):
            assert doc[n - 1] == 2 and (doc[n:] == 0).all()

    shutil.rmtree(tmp_path / "lra_release")
    _forbid_rebuild(monkeypatch, AANDataModule)
    again = AANDataModule(data_dir=tmp_path)
    again.prepare_data()
    again.setup()
    assert torch.equal(again.train_set[1][0], x)


def test_aan_malformed_rows_and_strict_sizes(tmp_path):
    write_aan(tmp_path)
    with pytest.raises(DataError, match="differ from the published"):
        AANDataModule(data_dir=tmp_path, strict_sizes=True).prepare_data()
    bad = next(tmp_path.rglob("new_aan_pairs.test.tsv"))
    bad.write_text("1.0\tid\tid\tonly four fields\n", encoding="utf-8")
    dm = AANDataModule(data_dir=tmp_path)
    with pytest.raises(DataError, match="line 1: expected 5") as err:
        dm.prepare_data()
    assert str(bad) in str(err.value) and not dm.cache_path.exists()


def test_build_vocab_rules():
    v = build_vocab(Counter({"b": 3, "a": 3, "c": 1, "<eos>": 9}), min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "<eos>", "a", "b"] and v.eos_id == 2 and v.bos_id is None
    assert v.encode(["a", "z", "b"], l_max=3).tolist() == [3, 1, 2]
    assert v.encode_chars("abz", l_max=10).tolist() == [3, 4, 1, 2]
    assert build_vocab(Counter({"a": 1}), append_eos=False).itos == ["<pad>", "<unk>", "a"]
    h = hashlib.md5(v.to_json().encode()).hexdigest()
    assert hashlib.md5(type(v).from_json(v.to_json()).to_json().encode()).hexdigest() == h


def test_aan_only_newline_ends_a_row_and_truncation(tmp_path):
    rows = {"train": [("1.0", "carriage\rreturn", "abcdefgh"), ("0.0", "ab", "ba")],
            "eval": [("0.0", "a", "b")], "test": [("1.0", "b", "a")]}
    write_aan(tmp_path, rows)
    dm = AANDataModule(data_dir=tmp_path, l_max=5)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 2  # the "\r" inside a text did not split its row
    x, y, lengths = dm.train_set[0]
    assert y == 1 and lengths.tolist() == [5, 5]
    assert _decode(dm.vocab, x[0].tolist()) == ["c", "a", "r", "r", "<eos>"]
    assert _decode(dm.vocab, x[1].tolist()) == ["a", "b", "c", "d", "<eos>"]
    assert "e" not in dm.vocab.stoi and "\r" not in dm.vocab.stoi  # only kept characters are counted
