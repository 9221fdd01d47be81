"""psp.training.losses: hand-computed values, LPIPS and identity semantics, frozen nets, offline LPIPS weights."""
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psp.config import LossConfig
from psp.models.frozen import FrozenModule
from psp.models.identity import ID_CROP_256, IDLoss, id_crop_box
from psp.models.lpips import LPIPSLoss, LPIPSWeightsError
from psp.training.losses import PSPLoss, l2_loss, w_norm_loss

ALEX_FILE = "alexnet-owt-7be5be79.pth"


class TinyFace(nn.Module):
    """A stand-in recogniser with ArcFace's contract ([B,3,112,112] -> unit [B,8]) and with
    BatchNorm + Dropout, so that a module left in train mode gives visibly different answers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 28 * 28, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        assert x.shape[-2:] == (112, 112), x.shape
        e = self.bn(self.fc(self.drop(self.conv(x).flatten(1))))
        return e / e.norm(dim=1, keepdim=True)


def images(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def lpips_random():
    return LPIPSLoss(pretrained=False)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def fake_alexnet_file(path, trunk: nn.Module, extra=True):
    """A file laid out like torchvision's alexnet state dict, holding ``trunk``'s tensors."""
    state = {f"features.{k.split('.')[1]}.{k.split('.')[2]}": v.clone() for k, v in trunk.state_dict().items()}
    if extra:
        state["classifier.1.weight"] = torch.zeros(3, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# ----------------------------------------------------------------------------------------------
# Plain functions


def test_l2_hand_computed():
    y_hat, y = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    y[1] = -1.0  # sample 1 contributes 1.0 per element, sample 0 0.25
    assert l2_loss(y_hat, y).item() == pytest.approx((0.25 + 1.0) / 2)


def test_w_norm_hand_computed():
    w_avg = torch.tensor([1.0, -1.0])
    codes = torch.tensor([[[2.0, 0.0], [2.0, 0.0]],    # offsets all +-1: norm sqrt(4) = 2
                          [[4.0, -1.0], [1.0, 3.0]]])  # offsets (3, 0, 0, 4): norm 5
    assert w_norm_loss(codes, w_avg).item() == pytest.approx(3.5)
    assert w_norm_loss(codes, w_avg.expand(2, 2)).item() == pytest.approx(3.5)  # [n_styles, 512] form
    assert w_norm_loss(codes, None, start_from_latent_avg=False).item() == pytest.approx(
        (codes[0].norm() + codes[1].norm()).item() / 2)
    with pytest.raises(ValueError, match="needs w_avg"):
        w_norm_loss(codes, None)


def test_id_crop_box_scales_from_256():
    assert id_crop_box(256, 256) == ID_CROP_256 == (35, 223, 32, 220)
    assert id_crop_box(1024, 1024) == (140, 892, 128, 880)
    assert id_crop_box(128, 128) == (18, 112, 16, 110)


# ----------------------------------------------------------------------------------------------
# LPIPS


def test_lpips_zero_for_identical_positive_otherwise(lpips_random):
    x, y = images(seed=0), images(seed=1)
    assert lpips_random(x, x).item() == 0.0
    per_image = lpips_random(x, y, reduction="none")
    assert per_image.shape == (2,) and (per_image > 0).all()
    torch.testing.assert_close(lpips_random(x, y), per_image.mean())


def test_lpips_inputs_are_minus_one_one(lpips_random):
    """Our [-1, 1] inputs mean what the package means by [0, 1] inputs with normalize=True."""
    x, y = images(seed=2), images(seed=3)
    torch.testing.assert_close(lpips_random(x, y), lpips_random.net((x + 1) / 2, (y + 1) / 2, normalize=True).mean())


def test_lpips_backbone_from_torch_cache(offline, lpips_random):
    state = fake_alexnet_file(offline / ALEX_FILE, lpips_random.net.net)
    loaded = LPIPSLoss()
    torch.testing.assert_close(loaded.net.net.state_dict()["slice2.3.weight"], state["features.3.weight"])


def test_lpips_backbone_from_weights_path(offline, lpips_random, tmp_path):
    state = fake_alexnet_file(tmp_path / "local" / "alex.pth", lpips_random.net.net)
    loaded = LPIPSLoss(weights_path=tmp_path / "local" / "alex.pth")
    torch.testing.assert_close(loaded.net.net.state_dict()["slice5.10.bias"], state["features.10.bias"])


def test_lpips_offline_missing_backbone_error(offline):
    with pytest.raises(LPIPSWeightsError) as info:
        LPIPSLoss()
    message = str(info.value)
    assert "\n" not in message
    assert ALEX_FILE in message and "lpips.weights" in message and "download.pytorch.org" in message
    with pytest.raises(LPIPSWeightsError, match="nowhere.pth.*do not exist"):
        LPIPSLoss(weights_path="/nowhere.pth")


def test_lpips_wrong_weights_file(offline, tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(LPIPSWeightsError, match=r"bad.pth: not torchvision's ImageNet alex weights"):
        LPIPSLoss(weights_path=tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(LPIPSWeightsError, match="junk.pth: cannot load"):
        LPIPSLoss(weights_path=tmp_path / "junk.pth")


# ----------------------------------------------------------------------------------------------
# Identity


def explicit_id(net, y_hat, y, box):
    """The identity loss written out from pSp's definition (docs/design.md): crop, adaptive average pool, 1 - dot."""
    top, bottom, left, right = box
    embed = lambda x: net(F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], (112, 112)))  # noqa: E731
    similarity = (embed(y_hat) * embed(y)).sum(dim=1)
    return (1 - similarity).mean(), similarity.mean()


@pytest.mark.parametrize("size,box", [(256, (35, 223, 32, 220)), (128, (18, 112, 16, 110))])
def test_id_loss_matches_explicit_computation(size, box):
    id_loss = IDLoss(TinyFace())
    y_hat, y = images(3, size, seed=4), images(3, size, seed=5)
    loss, similarity = id_loss(y_hat, y)
    expected_loss, expected_similarity = explicit_id(id_loss.arcface, y_hat, y, box)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(similarity, expected_similarity)
    assert id_loss(y, y)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_id_loss_ignores_pixels_outside_the_crop():
    id_loss = IDLoss(TinyFace())
    y_hat, y = images(2, 256, seed=6), images(2, 256, seed=7)
    changed = y_hat.clone()
    changed[:, :, :35] = 1.0
    changed[:, :, :, 220:] = -1.0
    torch.testing.assert_close(id_loss(changed, y)[0], id_loss(y_hat, y)[0])


def test_real_arcface_is_locked_in_eval():
    """With the real IR-SE-50 (BatchNorm, Dropout, PReLU): frozen and in eval after .train()."""
    arcface_module = pytest.importorskip("psp.models.arcface")
    loss = PSPLoss.from_config(LossConfig(l2=0.0, lpips=0.0, id=1.0), arcface=arcface_module.ArcFace())
    nn.Sequential(loss).train()
    assert not any(m.training for m in loss.id_loss.modules())
    assert not any(p.requires_grad for p in loss.parameters())


# ----------------------------------------------------------------------------------------------
# PSPLoss


def test_total_is_weighted_sum_of_terms(lpips_random, monkeypatch):
    weights = {"l2": 1.0, "lpips": 0.8, "id": 0.1, "w_norm": 0.5}
    loss = PSPLoss(weights, lpips_pretrained=False, arcface=TinyFace())
    y_hat, y = images(seed=9), images(seed=10)
    codes, w_avg = torch.randn(2, 6, 8), torch.randn(6, 8)
    total, terms = loss(y_hat, y, codes=codes, w_avg=w_avg)
    assert set(terms) == {"loss_l2", "loss_lpips", "loss_id", "id_similarity", "loss_w_norm", "loss"}
    expected = (0.1 * terms["loss_id"] + 1.0 * terms["loss_l2"] + 0.8 * terms["loss_lpips"]
                + 0.5 * terms["loss_w_norm"])
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["loss_l2"], F.mse_loss(y_hat, y))
    torch.testing.assert_close(terms["loss_w_norm"], (codes - w_avg).flatten(1).norm(dim=1).mean())
    torch.testing.assert_close(terms["loss_id"], 1 - terms["id_similarity"])
    assert all(not t.requires_grad for t in terms.values())


def test_zero_weight_builds_nothing(offline):
    loss = PSPLoss.from_config(LossConfig(l2=1.0, lpips=0.0, id=0.0, w_norm=0.0))  # offline: LPIPS would fail
    assert loss.lpips is None and loss.id_loss is None
    assert list(loss.modules()) == [loss]
    total, terms = loss(images(seed=11), images(seed=12))
    assert set(terms) == {"loss_l2", "loss"}


def test_config_errors():
    with pytest.raises(ValueError, match="loss.id_weights"):
        PSPLoss.from_config(LossConfig(lpips=0.0, id=0.1, id_weights=None))
    with pytest.raises(ValueError, match="all loss weights"):
        PSPLoss.from_config(LossConfig(l2=0.0, lpips=0.0, id=0.0, w_norm=0.0))
    with pytest.raises(ValueError, match="needs the W\\+ codes"):
        PSPLoss({"w_norm": 1.0})(images(), images())
    with pytest.raises(ValueError, match="same shape"):
        PSPLoss({"l2": 1.0})(images(size=32), images(size=64))


def test_frozen_nets_stay_in_eval_and_get_no_gradients():
    loss = PSPLoss({"l2": 1.0, "lpips": 0.8, "id": 0.1}, lpips_pretrained=False, arcface=TinyFace())
    parent = nn.Sequential(nn.Linear(2, 2), loss)
    parent.train()
    loss.lpips.train()
    loss.id_loss.arcface.drop.train()  # a direct call on an inner layer is not ours to stop, but...
    loss.train()                        # ...any train() through the frozen wrapper undoes it
    assert parent[0].training
    assert not any(m.training for m in loss.modules() if m is not loss)
    assert [p for p in loss.parameters() if p.requires_grad] == []
    assert all(isinstance(getattr(loss, name.rstrip(".")), FrozenModule) for name in loss.frozen_prefixes)

    y_hat = images(seed=13).requires_grad_(True)
    y = images(seed=14)
    total, terms = loss(y_hat, y)
    total.backward()
    assert y_hat.grad is not None and y_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    # Dropout in train mode would make f(y) differ from f(y): identity similarity would drop below 1.
    assert loss(y, y)[1]["id_similarity"].item() == pytest.approx(1.0, abs=1e-6)


def test_metrics_regardless_of_weights_and_lazy_lpips():
    loss = PSPLoss({"l2": 1.0}, lpips_pretrained=False, arcface=TinyFace())
    assert loss.lpips is None
    y_hat, y = images(seed=15), images(seed=16)
    metrics = loss.metrics(y_hat, y)
    assert set(metrics) == {"l2", "lpips", "id_similarity"}
    assert isinstance(loss.lpips, LPIPSLoss) and not loss.lpips.training
    torch.testing.assert_close(metrics["lpips"], loss.lpips(y_hat, y))
    torch.testing.assert_close(metrics["l2"], F.mse_loss(y_hat, y))
    assert not any(t.requires_grad for t in metrics.values())


def test_metrics_without_lpips_backbone_warns_once(offline):
    loss = PSPLoss({"l2": 1.0})
    with pytest.warns(UserWarning, match="LPIPS metric disabled.*alexnet-owt"):
        assert set(loss.metrics(images(), images())) == {"l2"}
    assert set(loss.metrics(images(), images())) == {"l2"}  # no second attempt, no second warning


def test_metrics_never_download_the_lpips_backbone(tmp_path, monkeypatch):
    """Regression: a metric-only LPIPS (loss.lpips=0) used to try a download in every process."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: calls.append(a))
    loss = PSPLoss({"l2": 1.0})
    with pytest.warns(UserWarning, match="LPIPS metric disabled"):
        assert set(loss.metrics(images(), images())) == {"l2"}
    assert calls == []
