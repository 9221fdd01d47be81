"""Train a pSp encoder: ``python train.py --config ffhq [key=value ...]`` (see docs/readme/training.md)."""
from psp.cli.train import main

raise SystemExit(main())
