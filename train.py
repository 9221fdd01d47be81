"""Train a pSp encoder: ``python train.py --config ffhq [key=value ...]`` (see the README, section "Training")."""
from psp.cli.train import main

raise SystemExit(main())
