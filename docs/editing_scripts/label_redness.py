# Labels for `directions fit`: 1000 latents drawn through the mapping network, labelled by how red
# their rendered image is (mean of the red channel) -- a property anyone can measure.
import sys
from pathlib import Path

import torch

from psp.model import PSP
from psp.inference.outputs import save_latent

ckpt, out = sys.argv[1], Path(sys.argv[2])
model = PSP.from_checkpoint(ckpt)
torch.manual_seed(0)
with torch.no_grad():
    w = model.generator.get_latent(torch.randn(1000, model.generator.style_dim))
    codes = w[:, None].repeat(1, model.n_styles, 1)
    red = model.decode(codes)[:, 0].mean((1, 2))
rows = ["file,redness"]
for i, c in enumerate(codes):
    save_latent(out / f"s{i:03d}.pt", c, {"checkpoint": str(Path(ckpt).resolve())})
    rows.append(f"s{i:03d}.pt,{red[i]:.4f}")
(out / "labels.csv").write_text("\n".join(rows) + "\n")
