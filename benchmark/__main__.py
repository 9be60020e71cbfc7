"""python -m benchmark OUT [--budget cpu|paper] [--seeds N] [--methods a,b] [--device cpu|cuda] [--config_file F]

Every method of benchmark.json on the same test sets; writes OUT/results.csv, results.md, figures/
and prints results.md's path. Bad input ends with one ``error: ...`` line and exit status 2.
"""

import sys

from scripts.core.atomic import exit_on_sigterm
from scripts.core.errors import exit_on_user_errors

from .run import BENCHMARK_CONFIG, run_benchmark


def benchmark(out: str, budget: str = "cpu", seeds: int = 1, methods: str = None, device: str = None,
              config_file: str = None):
    """Trained models and metrics are cached in OUT/cache: a second run only redraws the table.

    Args:
        out: the results folder (results.csv, results.md, figures/, cache/).
        budget: cpu (2 cores, about 2 hours for one seed) or paper (a GPU).
        seeds: training seeds per trained method.
        methods: a comma-separated subset of benchmark.json's methods (default: all).
        device: cpu, cuda or cuda:N (default: cuda when available).
        config_file: files layered over benchmark.json (comma-separated), e.g. other budgets.
    """
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    layers = config_file.split(",") if isinstance(config_file, str) else list(config_file or [])
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds: expected an integer of at least 1, got {seeds!r}")
    results = run_benchmark(out, budget=str(budget), seeds=seeds, methods=methods, device=device,
                            config_file=[BENCHMARK_CONFIG, *layers])
    return results["files"]["markdown"]


def main(argv=None) -> None:
    import fire

    exit_on_sigterm()
    exit_on_user_errors(lambda: fire.Fire(benchmark, command=sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    main()
