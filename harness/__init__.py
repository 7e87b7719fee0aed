"""DFAD-Bench: the engine (config -> runs -> store) of the data-free distillation benchmark."""
__version__ = "0.1.0"

from . import data, models  # noqa: F401,E402  (register datasets and models)


def distill(*args, **kwargs):
    """See harness.api.distill."""
    import methods  # noqa: F401  (register the methods)

    from .api import distill as _distill

    return _distill(*args, **kwargs)
