"""fla's pure-torch references, loaded from the fetched upstream tree through portaudit.

portaudit is imported only when a test loads a reference, so that a test module's other tests also
run where portaudit is not installed (the torch-1.13 runtime-floor run, tools/check_runtime_floor.sh);
there the ``fla040_root``/``fla060_root`` fixtures skip the tests that need a reference first.
"""

from __future__ import annotations


def load_function(*args, **kwargs):
    """:func:`portaudit.numerics.upstream_code.load_function`."""
    from portaudit.numerics.upstream_code import load_function as load

    return load(*args, **kwargs)


def load_module(*args, **kwargs):
    """:func:`portaudit.numerics.upstream_code.load_module`."""
    from portaudit.numerics.upstream_code import load_module as load

    return load(*args, **kwargs)
