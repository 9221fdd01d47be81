"""Numerical parity of every family on full IR-SE-50 official-layout files (random weights), 5 ReStyle passes.

The official files and the float64 oracle are those of tests/test_families.py; prints max abs error / std of the
reference for codes and images at every pass, for PSP and its InferenceModel. About 15 minutes on 2 loaded CPU cores:

    PYTHONPATH=$PWD python scripts/parity_families.py
"""
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_families import IR_SE_50, PSP, Generator, oracle_run, released_file  # noqa: E402

torch.set_grad_enabled(False)
d = Path(tempfile.mkdtemp())
torch.manual_seed(4)
dec = Generator(32, 512, 8).eval()
dec64 = copy.deepcopy(dec).double()
face = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1
for family in ["psp", "e4e", "restyle_psp", "restyle_e4e"]:
    t = time.time()
    path, sd, la = released_file(d, family, 11, dec)
    model = PSP.from_checkpoint(path)
    k = 5 if model.is_iterative else 1
    ref = oracle_run(sd, dec64, la.double(), face.double(), family, IR_SE_50, k, 256)
    for form_name, form in (("PSP", model), ("InferenceModel", model.for_inference())):
        passes = form.encode_iterations(face, k)
        for i, (c, (rc, ri)) in enumerate(zip(passes, ref)):
            img = form.decode(c)
            ec = (c.double() - rc).abs().max().item() / rc.std().item()
            ei = (img.double() - ri).abs().max().item() / ri.std().item()
            print(f"{family:12s} {form_name:15s} pass {i+1}: codes err/std {ec:.2e}  image err/std {ei:.2e}", flush=True)
    print(family, f"{time.time()-t:.0f}s", flush=True)
    path.unlink()
