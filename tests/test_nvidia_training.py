"""CPU demo: train a small encoder for an imported NVIDIA generator (``checkpoint=*.pkl``)."""
import torch

import nvidia_fakes as nv
from psp.cli.train import main
from psp.model import PSP
from stylegan2 import load_generator
from test_system import write_tiny_yaml


def test_train_encoder_for_nvidia_pickle(tmp_path):
    # 16 px (6 W+ rows) where the tiny config says 32 px (8): the file's shape must win.
    pkl = tmp_path / "network-snapshot-000100.pkl"
    G_nv = nv.Generator(img_resolution=16, w_dim=16, channel_base=512, channel_max=16,
                        mapping_layers=2, conv_clamp=0.7, seed=7)
    nv.dump({"G": G_nv, "G_ema": G_nv}, pkl)
    out = tmp_path / "run"
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml", out, max_steps=2, val_every=2)
    assert main(["--config", str(cfg), f"model.generator.checkpoint={pkl}",
                 "model.w_avg.source=checkpoint"]) == 0
    model = PSP.from_checkpoint(out / "psp.pt")
    assert model.n_styles == G_nv.num_ws == 6
    torch.testing.assert_close(model.w_avg[0], G_nv.mapping.w_avg)
    imported, _ = load_generator(pkl)
    ws = 2 * torch.randn(1, 6, 16)
    with torch.no_grad():
        ours = model.generator([ws], input_is_latent=True, randomize_noise=False)[0]
        ref = imported([ws], input_is_latent=True, randomize_noise=False)[0]
    torch.testing.assert_close(ours, ref)  # same weights and the same clamp after the round trip
    torch.testing.assert_close(ref.double(), nv.o_synthesis(G_nv, ws), atol=1e-3 * ref.std().item(), rtol=0)
