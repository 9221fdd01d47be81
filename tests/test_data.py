"""psp.training.data: paired folders, skipping bad files (also in workers), synthetic samples, the datamodule."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from psp.config import DataConfig, TrainConfig
from psp.training.data import (
    DatasetError,
    PairedImageDataset,
    PSPDataModule,
    UnreadableImageWarning,
)
from psp.io.images import load_rgb, to_tensor
from psp.models.synthetic import SyntheticDataset


def write_image(path, seed, size=(24, 20), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class TinyGenerator(nn.Module):
    """Stand-in with the rosinality interface: get_latent, forward([W+], input_is_latent, randomize_noise)."""

    size, n_latent, style_dim = 16, 6, 8

    def __init__(self):
        super().__init__()
        self.style = nn.Linear(8, 8)
        self.render = nn.Linear(6 * 8, 3 * 16 * 16)

    def get_latent(self, z):
        return self.style(z)

    def forward(self, styles, input_is_latent=False, randomize_noise=True):
        assert input_is_latent and not randomize_noise
        w_plus = styles[0]
        assert w_plus.shape[1:] == (self.n_latent, self.style_dim)
        return torch.tanh(self.render(w_plus.flatten(1))).view(-1, 3, 16, 16), None


# ----------------------------------------------------------------------------------------------
# Image folders


def test_same_folder_pairs(tmp_path):
    write_image(tmp_path / "b.png", 1)
    write_image(tmp_path / "a" / "x.jpg", 2)
    data = PairedImageDataset(tmp_path, size=16)
    assert len(data) == 2
    sample = data[0]
    assert sample["path"] == "a/x.jpg"
    assert sample["source"].shape == (3, 16, 16) and sample["source"].dtype == torch.float32
    assert torch.equal(sample["source"], sample["target"])
    torch.testing.assert_close(sample["source"], to_tensor(load_rgb(tmp_path / "a" / "x.jpg"), 16))
    assert PairedImageDataset(tmp_path, tmp_path, size=16)._targets is None


def test_targets_matched_by_relative_path_ignoring_extension(tmp_path):
    write_image(tmp_path / "src" / "s" / "001.png", 1)
    write_image(tmp_path / "src" / "002.png", 2)
    write_image(tmp_path / "tgt" / "002.jpg", 3)
    write_image(tmp_path / "tgt" / "s" / "001.webp", 4)
    data = PairedImageDataset(tmp_path / "src", tmp_path / "tgt", size=16)
    by_path = {data[i]["path"]: data[i] for i in range(2)}
    expected = {rel: to_tensor(load_rgb(tmp_path / "tgt" / rel), 16) for rel in ("s/001.webp", "002.jpg")}
    torch.testing.assert_close(by_path["s/001.png"]["target"], expected["s/001.webp"])
    torch.testing.assert_close(by_path["002.png"]["target"], expected["002.jpg"])


def test_missing_and_ambiguous_targets(tmp_path):
    write_image(tmp_path / "src" / "a.png", 1)
    write_image(tmp_path / "src" / "b.png", 2)
    write_image(tmp_path / "src" / "c.png", 3)
    write_image(tmp_path / "tgt" / "a.png", 4)
    with pytest.raises(DatasetError, match=r"no target for source '.*src/b.png' in '.*tgt' \(and 1 more\)"):
        PairedImageDataset(tmp_path / "src", tmp_path / "tgt")
    write_image(tmp_path / "tgt" / "b.png", 5)
    write_image(tmp_path / "tgt" / "c.png", 6)
    write_image(tmp_path / "tgt" / "c.jpg", 7)
    with pytest.raises(DatasetError, match="two files for 'c': c.jpg and c.png"):
        PairedImageDataset(tmp_path / "src", tmp_path / "tgt")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images in"):
        PairedImageDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        PairedImageDataset(tmp_path / "nope")


def test_flip_is_shared_by_source_and_target(tmp_path):
    write_image(tmp_path / "src" / "a.png", 1)
    write_image(tmp_path / "tgt" / "a.png", 2)
    data = PairedImageDataset(tmp_path / "src", tmp_path / "tgt", size=16, flip=True)
    plain = PairedImageDataset(tmp_path / "src", tmp_path / "tgt", size=16)[0]
    flipped_count = 0
    for _ in range(16):
        sample = data[0]
        flipped = not torch.equal(sample["source"], plain["source"])
        expected_target = plain["target"].flip(-1) if flipped else plain["target"]
        assert torch.equal(sample["target"], expected_target)
        flipped_count += flipped
    assert 0 < flipped_count < 16
    same = PairedImageDataset(tmp_path / "src", size=16, flip=True)
    for _ in range(8):
        sample = same[0]
        assert torch.equal(sample["source"], sample["target"])


def test_bad_file_skipped_with_one_warning(tmp_path):
    for name, seed in [("a.png", 1), ("b.png", 2), ("c.png", 3)]:
        write_image(tmp_path / name, seed)
    truncate(tmp_path / "b.png")
    data = PairedImageDataset(tmp_path, size=16)
    with pytest.warns(UnreadableImageWarning, match=r"b.png: truncated image"):
        sample = data[1]
    assert sample["path"] == "c.png"  # the next good image stands in
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data[1]["path"] == "c.png"  # known bad: not read again, not warned again
    assert data.skipped == 1 and data.skipped_files == ["b.png"]


def test_bad_target_skips_the_pair(tmp_path):
    write_image(tmp_path / "src" / "a.png", 1)
    write_image(tmp_path / "src" / "b.png", 2)
    write_image(tmp_path / "tgt" / "a.png", 3)
    (tmp_path / "tgt" / "b.png").write_bytes(b"")
    data = PairedImageDataset(tmp_path / "src", tmp_path / "tgt", size=16)
    with pytest.warns(UnreadableImageWarning, match="b.png: empty file"):
        assert data[1]["path"] == "a.png"
    assert data.skipped_files == ["b.png"]


def test_skip_count_survives_worker_processes(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", i)
    truncate(tmp_path / "2.png")
    data = PairedImageDataset(tmp_path, size=16)
    loader = DataLoader(data, batch_size=2, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert sum(len(b["path"]) for b in batches) == 4
    assert data.skipped == 1 and data.skipped_files == ["2.png"]


def test_all_bad_raises(tmp_path):
    (tmp_path / "a.png").write_text("garbage")
    data = PairedImageDataset(tmp_path, size=16)
    with pytest.warns(UnreadableImageWarning), pytest.raises(DatasetError, match="every image pair"):
        data[0]


# ----------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_sample_is_the_generator_image_of_its_latent():
    g = TinyGenerator()
    data = SyntheticDataset(g, n=4, size=8, seed=3, fixed=True)
    sample = data[2]
    assert sample["source"].shape == (3, 8, 8) and sample["latent"].shape == (6, 8)
    assert torch.equal(sample["source"], sample["target"])
    assert torch.equal(sample["latent"], sample["latent"][:1].expand(6, 8))  # w repeated: a true W+ code
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(3 + 2))
    with torch.no_grad():
        torch.testing.assert_close(sample["latent"][0], g.get_latent(z)[0])
        image, _ = g([sample["latent"][None]], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(sample["source"], F.adaptive_avg_pool2d(image, 8)[0])
    assert not sample["source"].requires_grad


def test_synthetic_fixed_vs_random():
    g = TinyGenerator()
    fixed = SyntheticDataset(g, n=4, size=16, seed=0, fixed=True)
    assert torch.equal(fixed[1]["latent"], fixed[1]["latent"])
    assert not torch.equal(fixed[1]["latent"], fixed[2]["latent"])
    torch.manual_seed(0)
    rank0 = SyntheticDataset(g, n=4, size=16, seed=0)
    first, second = rank0[1]["latent"], rank0[1]["latent"]
    assert not torch.equal(first, second)
    rank1 = SyntheticDataset(g, n=4, size=16, seed=0)
    rank1.rank = 1
    torch.manual_seed(0)
    rank0_again = SyntheticDataset(g, n=4, size=16, seed=0)
    assert torch.equal(rank0_again[0]["latent"], first)  # same seed, same rank: same stream
    assert not torch.equal(rank1[0]["latent"], first)     # another rank: another stream


def test_synthetic_truncation():
    g = TinyGenerator()
    w_avg = torch.randn(8)
    full = SyntheticDataset(g, n=2, size=16, seed=0, fixed=True)[0]["latent"]
    half = SyntheticDataset(g, n=2, size=16, seed=0, truncation=0.5, w_avg=w_avg, fixed=True)[0]["latent"]
    torch.testing.assert_close(half, w_avg + 0.5 * (full - w_avg))
    with pytest.raises(ValueError, match="needs w_avg"):
        SyntheticDataset(g, n=2, size=16, truncation=0.7)


def test_synthetic_with_real_generator():
    stylegan2 = pytest.importorskip("stylegan2")
    g = stylegan2.Generator(32, style_dim=16, n_mlp=2, channel_max=16, impl="ref").eval()
    sample = SyntheticDataset(g, n=2, size=16, seed=0, fixed=True)[1]
    assert sample["latent"].shape == (g.n_latent, 16) and sample["source"].shape == (3, 16, 16)
    with torch.no_grad():
        image, _ = g([sample["latent"][None]], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(sample["source"], F.adaptive_avg_pool2d(image, 16)[0])


# ----------------------------------------------------------------------------------------------
# Datamodule


def test_datamodule_images(tmp_path):
    for i in range(5):
        write_image(tmp_path / "train" / f"{i}.png", i)
    for i in range(3):
        write_image(tmp_path / "test" / f"{i}.png", 10 + i)
    data_cfg = DataConfig(kind="images", train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"),
                          num_workers=0)
    module = PSPDataModule(data_cfg, TrainConfig(batch_size=2, test_batch_size=2), input_size=16)
    module.setup("fit")
    train, val = module.train_dataloader(), module.val_dataloader()
    assert train.drop_last and not val.drop_last
    assert [len(b["path"]) for b in train] == [2, 2]
    assert [len(b["path"]) for b in val] == [2, 1]
    assert next(iter(val))["source"].shape == (2, 3, 16, 16)
    assert module.train_set.flip and not module.val_set.flip
    small = PSPDataModule(data_cfg, TrainConfig(batch_size=8), input_size=16)
    with pytest.raises(DatasetError, match="fewer than train.batch_size=8"):
        small.train_dataloader()


def test_datamodule_synthetic():
    data_cfg = DataConfig(kind="synthetic", n_train=6, n_test=3, truncation=0.7, num_workers=4)
    module = PSPDataModule(data_cfg, TrainConfig(batch_size=4, test_batch_size=2), input_size=8,
                           generator=TinyGenerator())
    module.setup("fit")
    train = module.train_dataloader()
    assert train.num_workers == 0 and module.train_set.w_avg.shape == (8,)
    batch = next(iter(train))
    assert batch["latent"].shape == (4, 6, 8) and batch["target"].shape == (4, 3, 8, 8)
    val_a, val_b = list(module.val_dataloader()), list(module.val_dataloader())
    assert [len(b["path"]) for b in val_a] == [2, 1]
    assert torch.equal(val_a[0]["latent"], val_b[0]["latent"])
    with pytest.raises(ValueError, match="needs the generator"):
        PSPDataModule(data_cfg, TrainConfig(), input_size=8)
