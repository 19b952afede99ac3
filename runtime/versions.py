"""Installed library versions by import name, the CPU's flags, and the refusal of a build made for
another library version or another CPU.

`onnxruntime` is imported from the `onnxruntime` distribution on a CPU machine and from
`onnxruntime-gpu` on a GPU one (the two cannot share an environment), so asking the package index
name `onnxruntime` fails there; the distribution that owns the import name is asked instead.

A reduced-precision CPU build (OpenVINO, ONNX Runtime int8) records in its manifest what it relies
on (`requires`): the library version its files and caches are made for, and the CPU flags whose
kernels its numbers were checked with (bf16 needs AVX-512 BF16 or AMX; int8 VNNI or AMX, without
which ONNX Runtime's u8s8 kernels may saturate). `check_requires` refuses anything else in one line.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

CPUINFO = "/proc/cpuinfo"
# the flags that decide which kernels a CPU library picks (a result on AMX is no result for AVX2)
ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")


class IncompatibleBuild(RuntimeError):
    """A build made for another library version or for CPU flags this machine lacks."""


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


def version_number(version: str | None) -> str | None:
    """"onnxruntime-gpu 1.31.1" -> "1.31.1": the release, whichever distribution installs it."""
    return None if version is None else version.split()[-1]


def cpu_flags() -> list[str]:
    """Every flag /proc/cpuinfo reports (empty where there is none)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.split(":", 1)[0].strip() == "flags":
                    return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def isa_flags(flags: list[str]) -> list[str]:
    return [f for f in flags if f.startswith(ISA_PREFIXES)]


def check_requires(requires: dict[str, Any], where: str, flags: list[str] | None = None) -> None:
    """Refuse, in one line, a build whose `requires` this machine does not meet:
    {"libraries": {import name: version}, "cpu_flags": [[any of these], ...]} (every group needs one)."""
    for module, wanted in requires.get("libraries", {}).items():
        have = version_number(installed_version(module))
        if have != wanted:
            raise IncompatibleBuild(
                f"{where} was built with {module} {wanted}, this machine has {module} {have or 'not installed'}; rebuild it here with export/build_engines.py"
            )
    have_flags = set(cpu_flags() if flags is None else flags)
    for group in requires.get("cpu_flags", []):
        if not have_flags & set(group):
            raise IncompatibleBuild(
                f"{where} needs a CPU with {' or '.join(group)}, which this CPU lacks; build fp32 engines for it instead"
            )
