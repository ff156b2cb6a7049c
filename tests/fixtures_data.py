"""Tiny raw-data trees in the exact upstream formats, written by the tests themselves.

Each writer puts its files where the real archive would extract them (the LRA release's doubled
``lra_release/lra_release/`` nesting included) and returns what the tests need to check values.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

LRA = Path("lra_release") / "lra_release"


# -- ListOps ----------------------------------------------------------------------------------------
def listops_expr(op: str, *args: object) -> str:
    """Render an operator node the way the LRA generator does: MAX(2, 9) → ``( ( ( [MAX 2 ) 9 ) ] )``."""
    inner = f"[{op}"
    for a in args:
        inner = f"( {inner} {a} )"
    return f"( {inner} ] )"


def listops_rows() -> dict[str, list[tuple[str, int]]]:
    """A few hand-checked examples per split. Train never uses the digit 0, so 0 is ``<unk>`` later."""
    e = listops_expr
    return {
        "train": [
            (e("MAX", 2, 9), 9),
            (e("MIN", 4, 7, 1), 1),
            (e("SM", 8, e("MED", 3, 5)), 2),  # MED(3, 5) = int(4.0) = 4; (8 + 4) % 10
            (e("MED", 1, 2, 3, 4), 2),  # median 2.5 truncates to 2
            (e("SM", 9, 9, 9), 7),
            (e("MAX", e("MIN", 6, 8), 5), 6),
        ],
        "val": [(e("MIN", 3, 1), 1), (e("SM", 5, 6), 1)],
        "test": [(e("MAX", 0, 3), 3), (e("MED", 7, 7, 2), 7)],
    }


def write_listops(root: Path, rows: dict[str, list[tuple[str, int]]] | None = None) -> dict:
    rows = rows or listops_rows()
    folder = root / LRA / "listops-1000"
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in rows.items():
        with open(folder / f"basic_{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")  # as the LRA generator: "\r\n" line ends, header row
            w.writerow(["Source", "Target"])
            w.writerows(data)
    return rows


# -- AAN ----------------------------------------------------------------------------------------------
def aan_rows() -> dict[str, list[tuple[str, str, str]]]:
    """(label as written, text1, text2). Texts contain quotes that a quoting CSV reader would merge."""
    return {
        "train": [
            ("1.0", '"Neural nets, a survey', "abc abc"),
            ("0.0", "On parsing", 'He said "hi" twice'),
            ("1.0", "zzz", "bb"),
            ("0.0", 'ends with quote"', "c"),
        ],
        "eval": [("1", "ab", 'x"y'), ("0.0", "cab", "ba")],
        "test": [("0.0", "Q!", "a"), ("1.0", "b", "bc")],
    }


def write_aan(root: Path, rows: dict | None = None) -> dict:
    rows = rows or aan_rows()
    folder = root / LRA / "tsv_data"
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in rows.items():
        lines = [f"{lab}\tid{i}a\tid{i}b\t{t1}\t{t2}\n" for i, (lab, t1, t2) in enumerate(data)]
        (folder / f"new_aan_pairs.{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return rows


# -- IMDB ---------------------------------------------------------------------------------------------
def imdb_texts() -> dict[str, dict[str, list[str]]]:
    """Train counts: 'a' 16×, 'b' 16× (a tie, 7 + 8 + the one in "<br />"), 'c' 14× (just under
    min_freq 15), and ' ', '/', '<', '>', 'r', 'é' once each."""
    return {
        "train": {
            "pos": ["a" * 8 + "b" * 8, "a" * 4 + "c" * 7 + "<br />"],
            "neg": ["a" * 4 + "b" * 7, "c" * 7 + "é"],
        },
        "test": {"pos": ["abcz"], "neg": ["bbé", "aaaa"]},
    }


def write_imdb(root: Path, texts: dict | None = None) -> dict:
    texts = texts or imdb_texts()
    base = root / "aclImdb"
    for split, by_label in texts.items():
        for label, docs in by_label.items():
            folder = base / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(docs):
                rating = 8 if label == "pos" else 2
                (folder / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    (base / "train" / "unsup").mkdir(parents=True, exist_ok=True)
    (base / "train" / "unsup" / "0_0.txt").write_text("unlabelled " * 5, encoding="utf-8")
    (base / "imdb.vocab").write_text("the\na\n", encoding="utf-8")
    return texts


# -- MNIST ----------------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: zero, zero, type 0x08, ndim, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 20, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {"train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10),
            "t10k": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), (np.arange(n_test) * 3) % 10)}
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in data.items():
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
            blob = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return data


# -- CIFAR-10 -------------------------------------------------------------------------------------------
def write_cifar(root: Path, per_batch: int = 4, n_test: int = 5, seed: int = 0) -> dict:
    """Python pickles of dicts (bytes keys, as Python 2 wrote them) with data N × 3072 planar RGB."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + k) % 10]
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{k}_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        out[name] = (data, labels)
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                             b"ship", b"truck"], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "readme.html").write_text("<html></html>")
    return out


# -- Pathfinder -----------------------------------------------------------------------------------------
def write_pathfinder(root: Path, resolution: int = 32, n_files: int = 11, per_file: int = 2) -> np.ndarray:
    """``pathfinder{res}/curv_contour_length_14/{imgs/<k>/sample_<i>.png, metadata/<k>.npy}``.

    Image number g (in metadata-file order by int(stem), then line order) has pixel 0 = g and
    label g % 2, so the dataset order and labels can be checked. Returns the labels in that order.
    A decoy ``curv_baseline`` set with an empty PNG (like the real one) must be ignored.
    """
    base = root / LRA / f"pathfinder{resolution}"
    hard = base / "curv_contour_length_14"
    rng = np.random.default_rng(resolution)
    labels = []
    g = 0
    for k in range(n_files):
        lines = []
        (hard / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
        for i in range(per_file):
            img = rng.integers(0, 256, (resolution, resolution), dtype=np.uint8)
            img[0, 0] = g
            Image.fromarray(img).save(hard / "imgs" / str(k) / f"sample_{i}.png")
            lines.append(f"imgs/{k} sample_{i}.png {i} {g % 2} 1.0 6 2 2 0.5 1 1")
            labels.append(g % 2)
            g += 1
        (hard / "metadata").mkdir(parents=True, exist_ok=True)
        (hard / "metadata" / f"{k}.npy").write_text("\n".join(lines) + "\n")
    easy = base / "curv_baseline"
    (easy / "imgs" / "0").mkdir(parents=True, exist_ok=True)
    (easy / "imgs" / "0" / "sample_0.png").write_bytes(b"")
    (easy / "metadata").mkdir(parents=True, exist_ok=True)
    (easy / "metadata" / "0.npy").write_text("imgs/0 sample_0.png 0 1 1.0 6 2 2 0.5 1 1\n")
    return np.asarray(labels)


# -- Speech Commands ------------------------------------------------------------------------------------
SPEECH_WORDS = ("bed", "cat", "zero")  # labels 0, 1, 34 in the fixed class order


def write_speech(root: Path, per_word: int = 4) -> dict:
    """Word folders of 16 kHz int16 WAVs (one clip per word only 8,000 samples long), the two list
    files, and an ignored ``_background_noise_`` folder. Returns {relative path: int16 samples}."""
    base = root / "SpeechCommands" / "speech_commands_v0.02"
    clips = {}
    rng = np.random.default_rng(1)
    for w, word in enumerate(SPEECH_WORDS):
        (base / word).mkdir(parents=True, exist_ok=True)
        for n in range(per_word):
            length = 8000 if n == per_word - 1 else 16000
            audio = rng.integers(-3000 * (w + 1), 3000 * (w + 1), length).astype(np.int16)
            rel = f"{word}/spk{n:02d}_nohash_{n}.wav"
            sf.write(base / rel, audio, 16000, subtype="PCM_16")
            clips[rel] = audio
    (base / "_background_noise_").mkdir(exist_ok=True)
    sf.write(base / "_background_noise_" / "white_noise.wav", np.zeros(32000, np.int16), 16000, subtype="PCM_16")
    (base / "validation_list.txt").write_text("".join(f"{w}/spk00_nohash_0.wav\n" for w in SPEECH_WORDS))
    (base / "testing_list.txt").write_text("".join(f"{w}/spk01_nohash_1.wav\n" for w in SPEECH_WORDS))
    (base / "LICENSE").write_text("CC BY 4.0\n")
    return clips


def write_all(root: Path) -> Path:
    """Every task's raw fixture beneath one data folder (for the experiment-config tests)."""
    write_listops(root)
    write_aan(root)
    write_imdb(root)
    write_mnist(root)
    write_cifar(root)
    write_pathfinder(root, 32)
    write_pathfinder(root, 128, n_files=2, per_file=3)
    write_speech(root)
    return root


# -- archives ---------------------------------------------------------------------------------------------
def make_tar_gz(path: Path, folder: Path, arcname: str) -> str:
    """``tar czf path -C folder.parent folder.name`` (member names under ``arcname``); returns the MD5."""
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return hashlib.md5(path.read_bytes()).hexdigest()


def tar_with_members(path: Path, members: list[tuple[str, str, bytes | str]]) -> None:
    """A tar.gz with hand-made members ``(name, kind, data)``: kind ``file`` (data = bytes),
    ``symlink`` / ``hardlink`` (data = link target), ``dir`` or ``chardev``."""
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                         "chardev": tarfile.CHRTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = data
            tf.addfile(info)
