"""Command-line entry of the ISCL bundle (python bundle/scripts/cli.py COMMAND --help).

Works from any working directory: the bundle root is put on sys.path so that the
`scripts` package imports the same way as from the bundle's JSON configs.
"""

import os
import sys

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)


def prepare_mayo(root, out, region="abdomen", thickness=None, split=None, seed=0):
    """Index a Mayo LDCT copy (TCIA or AAPM-2016 layout) and write a training datalist JSON."""
    from scripts.mayo import prepare_mayo as _prepare

    return _prepare(root=root, out=out, region=region, thickness=thickness, split=split, seed=seed)


def main():
    import fire

    fire.Fire({"prepare_mayo": prepare_mayo})


if __name__ == "__main__":
    main()
