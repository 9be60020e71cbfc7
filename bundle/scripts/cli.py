"""Command-line entry of the ISCL bundle: python bundle/scripts/cli.py COMMAND --help

Works from any working directory: the bundle root is put on sys.path so that the `scripts`
package imports the same way as from the bundle's JSON configs. Bad input ends with one
``error: ...`` line naming the file or value, exit status 2, and nothing written.
"""

import os
import sys

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)


def prepare_mayo(root, out, region="abdomen", thickness=None, split=None, seed=0):
    """Index a Mayo LDCT copy (TCIA or AAPM-2016 layout) and write a training datalist JSON to OUT."""
    from scripts.mayo import prepare_mayo as build_datalist

    build_datalist(root=root, out=out, region=region, thickness=thickness, split=split, seed=seed)
    return os.path.abspath(out)


def simulate(out_dir, i0=None, size=256, seed=0):
    """Build the simulated low-dose CT set (NIfTI volumes + datalist.json) in OUT_DIR; prints the datalist path."""
    from scripts.simulate import DEFAULT_I0, make_simulated_dataset

    make_simulated_dataset(out_dir, i0=DEFAULT_I0 if i0 is None else float(i0), size=int(size), seed=int(seed))
    return os.path.join(os.path.abspath(out_dir), "datalist.json")


def main(argv=None):
    import fire

    try:
        fire.Fire({"prepare_mayo": prepare_mayo, "simulate": simulate}, command=argv)
    except (ValueError, FileNotFoundError) as error:  # the project's data errors are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
