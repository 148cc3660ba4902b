"""bwfast: a fast MQTT broker with a Cython hot path."""
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pkgutil import extend_path

__version__ = "0.1.0"


def _compiled(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, "packet" + suffix))
               for suffix in EXTENSION_SUFFIXES)


# `python -m bwfast` (or `python -m perf`) run in a source checkout imports this
# directory, not the installed package, and a checkout built by `pip install .`
# holds no compiled modules (packet, topics, fastpath: they exist only where pip
# installed them). So every `bwfast` directory on sys.path is part of the
# package, and one holding the compiled modules comes first: the whole broker
# then runs from one build, never checkout code against another build's .so.
# Without any compiled build the import still fails; there is no fallback.
__path__ = extend_path(__path__, __name__)
__path__.sort(key=lambda directory: not _compiled(directory))
