"""Data loading through torchvision on generated IDX files; binarization on the device."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from scipy import stats

from relaxrun.config import group_options
from relaxrun.data import DataError, binarize, load_data, load_images

from conftest import make_mnist_root


def test_loads_generated_idx_through_torchvision(mnist_root):
    images = load_images("mnist", str(mnist_root), True, download=False)
    assert images.shape == (600, 784) and images.dtype == torch.uint8
    raw = (mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    assert torch.equal(images[0], torch.tensor(list(raw[16:16 + 784]), dtype=torch.uint8))


def test_other_datasets_load_the_same_way(tmp_path):
    make_mnist_root(tmp_path, 100, 50, folder="FashionMNIST")
    assert load_images("fashion_mnist", str(tmp_path), False, download=False).shape == (50, 784)


@pytest.mark.parametrize("damage,needle", [
    (lambda b: b[: len(b) - 100], "truncated"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "magic number"),
    (lambda b: b + b"\x00" * 7, "too long"),
    (lambda b: b"", "magic number"),
])
def test_damaged_files_are_named(tmp_path, damage, needle):
    root = make_mnist_root(tmp_path, 100, 50)
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=needle) as err:
        load_images("mnist", str(root), False, download=False)
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_missing_files_without_download_name_files_and_folder(tmp_path):
    root = make_mnist_root(tmp_path, 100, 50)
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_images("mnist", str(root), True, download=False)
    msg = str(err.value)
    assert "train-labels-idx1-ubyte" in msg and str(root / "MNIST" / "raw") in msg


def test_dynamic_binarization_is_bernoulli_of_intensity():
    g = torch.Generator().manual_seed(0)
    pixels = torch.tensor([0, 51, 128, 204, 255], dtype=torch.uint8).repeat(20000, 1)
    x = binarize(pixels, "dynamic", g)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    p = pixels[0].double() / 255
    for j in range(5):  # binomial test per intensity, false-alarm rate 1e-3 each
        k = int(x[:, j].sum())
        assert stats.binomtest(k, 20000, p[j].item()).pvalue > 1e-3 or p[j] in (0, 1)
    assert x[:, 0].sum() == 0 and x[:, 4].sum() == 20000
    x2 = binarize(pixels, "dynamic", g)
    assert not torch.equal(x, x2)  # resampled every batch


def test_dynamic_binarization_every_intensity_and_odd_sizes():
    g = torch.Generator().manual_seed(1)
    n = 4000
    pixels = torch.arange(256, dtype=torch.uint8).repeat(n, 1)
    counts = binarize(pixels, "dynamic", g).sum(0)
    p = torch.arange(256, dtype=torch.float64) / 255
    # one binomial test per intensity at family-wise false-alarm rate 1e-3 (Bonferroni over 256)
    pvalues = [stats.binomtest(int(counts[i]), n, p[i].item()).pvalue for i in range(1, 255)]
    assert min(pvalues) > 1e-3 / 256
    assert counts[0] == 0 and counts[255] == n
    # sizes that are not a multiple of the four draws taken from each random word
    for shape in [(1, 1), (3, 5), (7, 13)]:
        x = binarize(torch.full(shape, 128, dtype=torch.uint8), "dynamic", g)
        assert x.shape == shape and x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}


def test_dynamic_binarization_probability_by_enumerating_the_random_draw(monkeypatch):
    """Feed every one of the 65536 int16 draws: the mean output is P(1) itself, exactly."""
    import relaxrun.data as data_mod

    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(-1, 1)
    monkeypatch.setattr(data_mod, "random_int16", lambda shape, device, generator=None: every.expand(shape))
    pixels = torch.arange(256, dtype=torch.uint8).repeat(65536, 1)
    prob = binarize(pixels, "dynamic").double().mean(0)
    exact = torch.arange(256, dtype=torch.float64) / 255
    assert prob[0] == 0 and prob[255] == 1
    assert (prob - exact).abs().max() <= 0.5 / 65536


def test_static_and_none():
    pixels = torch.tensor([[0, 127, 128, 255]], dtype=torch.uint8)
    assert binarize(pixels, "static").tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert torch.allclose(binarize(pixels, "none"), pixels.float() / 255)


def test_evaluation_binarization_is_fixed_and_validation_split(mnist_root):
    cfg = group_options("data", "mnist", root=str(mnist_root), download=False, val_size=100)
    a = load_data(cfg, torch.device("cpu"))
    b = load_data(cfg, torch.device("cpu"))
    assert torch.equal(a.test, b.test) and torch.equal(a.val, b.val)
    assert a.n_train == 500 and a.val.shape == (100, 784)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([idx for _, _, idx in a.batches(64, g)])
    assert torch.equal(seen.sort().values, torch.arange(500))  # an epoch is a permutation


def test_train_batch_draws_what_stored_thresholds_would_draw():
    """The batch's thresholds are computed when it is drawn: the same draws as the float32 copy of the
    whole set that Data kept before (same values, same random stream), with only the uint8 pixels kept."""
    from relaxrun.data import Data, binarize_dynamic, dynamic_thresholds

    pixels = torch.randint(0, 256, (50, 784), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = Data(train=pixels, test=torch.zeros(1, 784), val=None, binarize="dynamic")
    assert not [f for f in vars(data).values() if isinstance(f, torch.Tensor) and f.dtype == torch.float32
                and f.shape == pixels.shape]  # no whole-set float copy
    idx = torch.tensor([3, 7, 7, 41])
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):  # and the stream stays in step batch after batch
        a = data.train_batch(idx, g_new)
        b = binarize_dynamic(dynamic_thresholds(pixels).index_select(0, idx), g_old)
        assert torch.equal(a, b)
    assert torch.equal(data.train_batch(idx, torch.Generator().manual_seed(5)),
                       binarize(pixels[idx], "dynamic", torch.Generator().manual_seed(5)))
    static = Data(train=pixels, test=torch.zeros(1, 784), val=None, binarize="static")
    assert torch.equal(static.train_batch(idx, None), (pixels[idx] > 127).float())
