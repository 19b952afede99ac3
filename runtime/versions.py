"""Installed library versions by import name, whichever distribution provides the module.

`onnxruntime` is imported from the `onnxruntime` distribution on a CPU machine and from
`onnxruntime-gpu` on a GPU one (the two cannot share an environment), so asking the package index
name `onnxruntime` fails there; the distribution that owns the import name is asked instead.
"""
from __future__ import annotations

from importlib import metadata


def installed_version(module: str) -> str | None:
    """The version of the distribution that installs the import name `module`, with that
    distribution's name in front where it is not `module` ("onnxruntime-gpu 1.23.2"); None if none does."""
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        pass
    for dist in metadata.packages_distributions().get(module, []):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None
