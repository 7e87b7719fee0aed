"""One file per method; importing this package registers them all."""
from importlib import import_module

for _name in ("kd_ori", "dfad"):
    import_module(f"{__name__}.{_name}")
