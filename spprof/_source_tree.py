"""Running from a source checkout: hand over to the installed spprof.

``python -m spprof`` or ``python -m pytest`` in the repository root puts the checkout first on
``sys.path``, so ``import spprof`` finds this source folder, which has no compiled extension
(``pip install .`` builds it into the installed copy only). The package then takes its modules
from the installed copy instead (``spprof.__path__``), code and extension together.
"""

from __future__ import annotations

import os
import sys


def has_extension(folder: str) -> bool:
    """Whether ``folder`` holds an extension this interpreter can load (one built for another
    Python version does not count)."""
    import importlib.machinery

    names = {"_native" + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES}
    try:
        return not names.isdisjoint(os.listdir(folder))
    except OSError:
        return False


def installed_copy(here: str) -> str | None:
    """The folder of an installed spprof to use in place of the source folder ``here``: None when
    ``here`` has its extension (an editable install, a build) or nothing else is installed."""
    if has_extension(here):
        return None
    real_here = os.path.realpath(here)
    for entry in sys.path:
        folder = os.path.join(entry or os.getcwd(), "spprof")
        if (os.path.realpath(folder) != real_here and has_extension(folder)
                and os.path.isfile(os.path.join(folder, "__init__.py"))):
            return folder
    return None
