"""`python3 -m analysis RESULTS_DIR [--out DIR] [--only NAME,...]`: draw the figures.

This is what `sqlab plot` runs.  It prints one written path per line on stdout and
exits with: 0 all figures drawn; 1 a figure failed (the others were written);
2 usage error or not a results directory; 3 Debian packages missing (the message
names them); 130 interrupted.
"""

import argparse
import sys

from . import install_hint, missing_packages

EXIT_FIGURE_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING_PACKAGES = 3
EXIT_INTERRUPTED = 130


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python3 -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a sqlab results directory (holds runs/*.h5)")
    parser.add_argument("--out", help="where the figures go (default: RESULTS/figures)")
    parser.add_argument("--only", default="", help="comma-separated figure families (default: all)")
    parser.add_argument("--list", action="store_true", help="print the figure families and exit")
    return parser.parse_args(argv)


def main(argv=None):
    """Checks the packages first, so a missing one gives the install hint, not a traceback."""
    if argv is None:
        argv = sys.argv[1:]
    missing = missing_packages()
    if missing:
        print("sqlab plot: " + install_hint(missing), file=sys.stderr)
        return EXIT_MISSING_PACKAGES
    from .figures import FIGURES, draw_all
    from .load import ResultsError, load_results

    if "--list" in argv:
        print("\n".join(FIGURES))
        return 0
    args = parse_args(argv)
    only = [name for name in args.only.split(",") if name]
    unknown = [name for name in only if name not in FIGURES]
    if unknown:
        print("sqlab plot: unknown figure {} (valid: {})".format(", ".join(unknown), ", ".join(FIGURES)),
              file=sys.stderr)
        return EXIT_USAGE
    try:
        results = load_results(args.results)
    except ResultsError as e:
        print("sqlab plot: {}".format(e), file=sys.stderr)
        return EXIT_USAGE
    failures = []

    def report(family, error):
        failures.append(family)
        print("sqlab plot: figure '{}' failed: {}: {}".format(family, type(error).__name__, error), file=sys.stderr)

    for path in draw_all(results, args.out, only, on_error=report):
        print(path, flush=True)
    return EXIT_FIGURE_FAILED if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the figures written so far stay; no traceback
        sys.exit(EXIT_INTERRUPTED)
