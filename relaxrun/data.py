"""Datasets held whole on the training device, batched by index, binarized on the device.

torchvision's dataset classes read (and, when allowed, download) the IDX files; after that the
split is one ``uint8`` tensor ``[N, 784]`` on the device. An epoch is a random permutation of
indices; a batch is ``images[idx]`` turned into floats and binarized there:

* ``dynamic`` -- every batch resampled as Bernoulli(pixel intensity) (the usual choice for
  discrete-latent VAEs);
* ``static`` -- intensity > 0.5;
* ``none`` -- intensities in [0, 1].

Before torchvision reads them, the four IDX files are checked: complete IDX files whose size
matches their header (:func:`check_idx`), and, for MNIST files of exactly the original's size, the
original's MD5 (:func:`check_checksum`; smaller or generated files are not hashed). A problem is a
:class:`DataError` naming the file.

Evaluation data (test, validation) is binarized once with a seeded generator (``data.eval_seed``)
so that every run of every method is scored on the same binary images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass

import torch
import torchvision

log = logging.getLogger(__name__)

DATASETS = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
    "kmnist": torchvision.datasets.KMNIST,
}


class DataError(RuntimeError):
    """The data files are absent, unreadable or corrupt (the message says which and where)."""


def raw_folder(name: str, root: str) -> str:
    return os.path.join(root, DATASETS[name].__name__, "raw")


def raw_files(name: str) -> list[str]:
    return [os.path.splitext(os.path.basename(url))[0] for url, _ in DATASETS[name].resources]


#: Size (bytes) and MD5 of the four original MNIST files, as torchvision extracts them from the
#: archives whose MD5s it lists (``torchvision.datasets.MNIST.resources``: f68b3c2d..., d53e105e...,
#: 9fb629c4..., ec29112d... for the ``.gz`` files). A file of exactly the original's size is the
#: original or damaged, and must have its MD5 (:func:`check_checksum`); a file of any other size is
#: not MNIST's (a subset, generated test data) and is checked as an IDX file only.
#: FashionMNIST and KMNIST have no table: their files are checked as IDX files only.
ORIGINAL_FILES = {
    "mnist": {
        "train-images-idx3-ubyte": (47040016, "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": (60008, "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": (7840016, "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": (10008, "27ae3e4e09519cfbb04c329615203637"),
    },
}
_verified: dict[tuple, bool] = {}  # (path, size, mtime_ns) of files whose MD5 was found right


def check_checksum(name: str, path: str) -> None:
    """Raise DataError naming ``path`` if it has the size of dataset ``name``'s original file of that
    name (:data:`ORIGINAL_FILES`) but not its MD5: a damaged (or altered) copy of the original.

    Files of another size, and datasets without a table, are not checked (generated IDX files in
    the tests have other sizes). A file found right is not hashed again while unchanged (same
    size and modification time) in this process."""
    known = ORIGINAL_FILES.get(name, {}).get(os.path.basename(path))
    if known is None:
        return
    size, md5 = known
    try:
        st = os.stat(path)
        if st.st_size != size:
            return
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if _verified.get(key):
            return
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if digest.hexdigest() != md5:
        raise DataError(f"{path} has the size of the original {name} file but MD5 {digest.hexdigest()}, not the "
                        f"original's {md5}: the file is damaged; delete it and download it again "
                        "(data.download=true) or copy it again")
    _verified[key] = True


def check_idx(path: str) -> None:
    """Raise DataError naming ``path`` unless it is a complete uint8 IDX file (images 3-d, labels 1-d)."""
    expected_dims = 3 if "images" in os.path.basename(path) else 1
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4 + 4 * expected_dims)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != expected_dims:
        raise DataError(f"{path} is not a uint8 IDX file with {expected_dims} dimension(s) "
                        f"(magic number {head[:4].hex() or 'missing'}, expected 000008{expected_dims:02x})")
    if len(head) < 4 + 4 * expected_dims:
        raise DataError(f"{path} is truncated (header incomplete)")
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(expected_dims)]
    want = 4 + 4 * expected_dims + math.prod(dims)
    if size != want:
        raise DataError(f"{path} is {'truncated' if size < want else 'too long'}: {size} bytes where its header "
                        f"({' x '.join(map(str, dims))}) needs {want}")


def load_images(name: str, root: str, train: bool, download: bool) -> torch.Tensor:
    """The split's images as ``uint8 [N, 784]`` on the CPU."""
    cls = DATASETS[name]
    folder = raw_folder(name, root)
    files = raw_files(name)
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing and not download:
        raise DataError(f"{name} files not found: put {', '.join(files)} in {os.path.abspath(folder)} "
                        "(or set data.download=true)")
    if not missing:
        for f in files:
            check_idx(os.path.join(folder, f))
            check_checksum(name, os.path.join(folder, f))
    chatter = io.StringIO()
    # the folders a download would create: removed again (when still empty) if it fails
    made = [p for p in (os.path.join(root, cls.__name__, "raw"), os.path.join(root, cls.__name__), root)
            if not os.path.exists(p)]
    try:
        with contextlib.redirect_stdout(chatter):  # torchvision prints every mirror it tries
            ds = cls(root, train=train, download=download and bool(missing))
    except Exception as err:  # download failure (offline) or unreadable files
        log.debug("torchvision said: %s", chatter.getvalue())
        for folder_made in made:  # innermost first: only folders this attempt created, only if empty
            with contextlib.suppress(OSError):
                os.rmdir(folder_made)
        if missing:
            raise DataError(f"{name} files not found and could not be downloaded: put {', '.join(files)} "
                            f"in {os.path.abspath(folder)} (or point data.root at the folder holding "
                            f"{cls.__name__}/raw)") from None
        raise DataError(f"could not read {name} from {os.path.abspath(folder)}: {err}") from None
    images = ds.data
    if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{name} images in {os.path.abspath(folder)} have shape {tuple(images.shape)} and dtype "
                        f"{images.dtype}; expected [N, 28, 28] uint8")
    return images.reshape(images.shape[0], -1).contiguous()


def random_int16(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent ``int16`` draws, uniform on all 65536 values, four from each 64-bit random word.

    ``random_`` over the full ``int64`` range fills every bit of a word from one call of the
    generator; viewing the words as ``int16`` gives four uniform draws per call, where ``torch.rand``
    spends one call per float (6x slower on the CPU at 100 x 784).
    """
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-2**63, None, generator=generator)
    return words.view(torch.int16)[:n].view(shape)


def dynamic_thresholds(pixels_u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the thresholds of :func:`binarize_dynamic`: ``t(x) - 32768`` as float32.

    ``t(x) = round(65536 x / 255) = 257 x + round(x / 255)`` (65536 = 257 * 255 + 1) takes 65537
    values, one more than 16 bits hold; float32 holds every one of them (and every difference with
    an int16) exactly.
    """
    t = pixels_u8.to(torch.float32)
    # in place: a whole training set of float32 temporaries would take 188 MB each for MNIST
    return t.mul_(257).add_(pixels_u8 >> 7).sub_(32768)


def binarize_dynamic(thresholds: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel from :func:`dynamic_thresholds`: float32 in {0, 1}.

    With ``r`` uniform on the 65536 ``int16`` values the pixel is ``r < t(x) - 32768``, so
    P(1) = t(x) / 65536: exactly 0 at x = 0, exactly 1 at x = 255 and within 0.5 / 65536 = 7.6e-6
    of x / 255 in between. The comparison is computed as ``clamp(t(x) - 32768 - r, 0, 1)``: the
    difference is an integer, so this is 1 exactly when ``r`` lies below the threshold and 0
    otherwise, produced as float32 in two passes (a comparison and then a bool-to-float conversion
    take 3x as long on the CPU).
    """
    r = random_int16(tuple(thresholds.shape), thresholds.device, generator)
    return torch.sub(thresholds, r).clamp_(0.0, 1.0)


def binarize(batch_u8: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 pixels ``[B, D]`` -> float32 in {0, 1} (or [0, 1] for ``none``), on the same device.

    ``dynamic`` draws each pixel from Bernoulli(x / 255) to 16-bit resolution (:func:`binarize_dynamic`).
    """
    if mode == "dynamic":
        return binarize_dynamic(dynamic_thresholds(batch_u8), generator)
    x = batch_u8.to(torch.float32).div_(255.0)
    if mode == "static":
        return (x > 0.5).to(torch.float32)
    return x


@dataclass
class Data:
    """Everything the loop needs: raw training images and fixed evaluation sets, all on ``device``.

    The training images stay uint8 (1 byte a pixel: 47 MB for MNIST). For dynamic binarization each
    batch's thresholds are computed from its pixels when it is drawn (:func:`dynamic_thresholds`,
    the same values a stored float32 copy of the whole set would hold, so the draws and the seeded
    streams are the same); keeping that copy would cost 188 MB for MNIST to save about 0.1 ms a batch.
    """

    train: torch.Tensor  # uint8 [N, 784]
    test: torch.Tensor  # float32 [M, 784], binarized once
    val: torch.Tensor | None  # float32 [V, 784] or None
    binarize: str

    @property
    def n_train(self) -> int:
        return self.train.shape[0]

    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0, perm: torch.Tensor | None = None):
        """Yield (perm, i, index tensor) over one epoch; ``perm`` may be given to resume mid-epoch."""
        if perm is None:
            perm = torch.randperm(self.n_train, generator=generator, device=generator.device)
        for i in range(start, (self.n_train + batch_size - 1) // batch_size):
            yield perm, i, perm[i * batch_size:(i + 1) * batch_size]

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return binarize(self.train.index_select(0, idx), self.binarize, generator)


def load_data(cfg, device: torch.device) -> Data:
    """Load ``cfg.name`` from ``cfg.root``; split off ``cfg.val_size`` validation images."""
    train = load_images(cfg.name, cfg.root, True, cfg.download)
    test = load_images(cfg.name, cfg.root, False, cfg.download)
    if cfg.val_size >= train.shape[0]:
        raise DataError(f"data.val_size={cfg.val_size} leaves no training images (train has {train.shape[0]})")
    g = torch.Generator().manual_seed(cfg.eval_seed)
    test_bin = binarize(test, cfg.binarize if cfg.binarize != "dynamic" else "dynamic", g)
    val = None
    if cfg.val_size:
        val = binarize(train[-cfg.val_size:], cfg.binarize, g).to(device)
        train = train[:-cfg.val_size]
    return Data(train=train.to(device), test=test_bin.to(device), val=val, binarize=cfg.binarize)
