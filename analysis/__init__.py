"""sqlab's analysis package: load a results directory and draw its figures.

The command line (`sqlab plot`, `python3 -m analysis`) and the notebooks share this
code, so a figure looks the same wherever it is drawn.  Importing the package itself
needs nothing beyond the standard library: the entry point must be able to say which
Debian packages are missing before it tries to use them.  The heavy modules load
lazily (`analysis.load_results` imports `analysis.load` on first use).
"""

import importlib

# Python module -> the Debian package that provides it (toolchain.md: no pip here).
REQUIRED = {
    "numpy": "python3-numpy",
    "h5py": "python3-h5py",
    "matplotlib": "python3-matplotlib",
    "yaml": "python3-yaml",
}

_LAZY = {
    "load_results": "load",
    "load_run": "load",
    "Results": "load",
    "Run": "load",
    "ResultsError": "load",
    "draw_all": "figures",
    "FIGURES": "figures",
}


def missing_packages():
    """The Debian packages whose Python modules fail to import, in a stable order."""
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def install_hint(packages):
    """The message that tells a user how to get the missing modules (never pip)."""
    return ("needs Debian's Python packages: {0}\n"
            "install them with:  sudo apt-get install {0}\n"
            "(they are used through /usr/bin/python3; a python3 from pyenv or a venv "
            "cannot see them)".format(" ".join(packages)))


def __getattr__(name):
    """Import `load` / `figures` only when their names are first used."""
    if name in _LAZY:
        module = importlib.import_module("." + _LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError("module 'analysis' has no attribute {!r}".format(name))
