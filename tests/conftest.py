import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ROOT = os.path.join(REPO_ROOT, "bundle")
# the bundle's python package is `scripts` (MONAI model-zoo convention), importable from the bundle root
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)
# the benchmark package (outside the shipped bundle) imports from the repository root
if REPO_ROOT not in sys.path:
    sys.path.insert(1, REPO_ROOT)
