"""The benchmark of the ISCL bundle: every denoiser (BM3D, supervised and self-supervised baselines,
the ISCL ablations, the shipped weights) on the same test sets, and the speed benchmarks.

Not part of the shipped bundle: this package imports the bundle's ``scripts`` (its folder is put on
``sys.path`` here), the bundle never imports this package. Run from the repository root:
``python -m benchmark OUT`` (or ``python bundle/scripts/cli.py benchmark OUT``, which runs it).
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_DIR = os.path.join(REPO_ROOT, "bundle")
if BUNDLE_DIR not in sys.path:
    sys.path.insert(0, BUNDLE_DIR)
