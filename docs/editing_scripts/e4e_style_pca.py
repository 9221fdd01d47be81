# An e4e-style GANSpace file ({"comp" [k, 1, D], "mean" [1, D], "std" [k]}) to show the file route.
import sys

import torch

from psp.editing import ganspace
from psp.model import PSP

pca = ganspace(PSP.from_checkpoint(sys.argv[1]).generator, 10000, 8, seed=1)
torch.save({"comp": pca["comp"][:, None], "mean": pca["mean"][None], "std": pca["std"]}, sys.argv[2])
