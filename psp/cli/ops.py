"""``psp ops build|info``: the StyleGAN2 ops' own command line (``python -m stylegan2.ops``).

The ops live in ``stylegan2``, which never imports ``psp``, so their command line stays there too;
this is the same command under the ``psp`` console script.
"""
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from stylegan2.ops.__main__ import main as ops_main

    return ops_main(list(argv) if argv is not None else None)
