"""Building twolevel's C kernels with the system C compiler, once per installation, into a cache.

Two kernel libraries use this: the Bayesian callbacks (:mod:`twolevel.models.bayes.ckernels`)
and glmer's PIRLS (:mod:`twolevel.models.glmm.cpirls`). Each is one C file, compiled into a
shared library that a process loads with :mod:`ctypes` in microseconds; numba's kernels are the
fallback and the reference.

Where a library lives: ``$TWOLEVEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/twolevel``, else
``~/.cache/twolevel``; its name carries a hash of the source, the flags, the compiler and (for
flags tuned to this processor, ``-march=native``) the processor's feature flags, so an edited
kernel, another compiler or another machine sharing the folder builds anew. The build writes a
temporary file and renames it, so processes building at the same time never load a
half-written library.

Which route a caller takes (:func:`kernel_route`): ``TWOLEVEL_KERNELS=c`` or ``numba`` forces
one; by default (``auto``) C when a C compiler (``$CC``, ``cc``, ``gcc``, ``clang``) is on the
PATH and no build of this process has failed, numba otherwise.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from twolevel.data.errors import TwolevelError

__all__ = ["CSource", "ROUTES", "cache_dir", "compiler", "cpu_tag", "kernel_route",
           "open_library"]

ROUTES = ("auto", "c", "numba")


def cache_dir() -> Path:
    """``$TWOLEVEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/twolevel``, else ``~/.cache/twolevel``."""
    if os.environ.get("TWOLEVEL_CACHE_DIR"):
        return Path(os.environ["TWOLEVEL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "twolevel"


def compiler() -> str | None:
    """The C compiler: ``$CC`` (its first word) if set, else the first of cc, gcc, clang on the
    PATH; None when there is none."""
    cc = os.environ.get("CC", "").split()
    if cc:
        return shutil.which(cc[0])
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cpu_tag() -> str:
    """The processor's feature flags (``/proc/cpuinfo``'s first ``flags`` line; the machine name
    elsewhere): what a ``-march=native`` build depends on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_route(errors: list[str]) -> str:
    """``"c"`` or ``"numba"``: ``$TWOLEVEL_KERNELS`` (``auto``, ``c``, ``numba``; default auto:
    C when a compiler is found and ``errors`` (the failed builds of this process) is empty)."""
    route = os.environ.get("TWOLEVEL_KERNELS", "auto").strip().lower() or "auto"
    if route not in ROUTES:
        raise TwolevelError(f"TWOLEVEL_KERNELS={route!r} is not a kernel route; use one of "
                            f"{', '.join(ROUTES)}")
    if route == "auto":
        return "c" if compiler() is not None and not errors else "numba"
    return route


@dataclass(frozen=True)
class CSource:
    """One C file and how to build it: ``cc *flags source -o lib *libs``; ``native`` adds the
    processor's flags to the library's hash (for ``-march=native``)."""

    source: Path
    flags: tuple[str, ...]
    libs: tuple[str, ...] = ("-lm",)
    native: bool = False

    def library_path(self, cc: str | None = None) -> Path:
        """``<stem>-<hash of source, flags, compiler[, processor]>-<machine>.so`` in
        :func:`cache_dir`."""
        h = hashlib.sha256(self.source.read_bytes())
        h.update(" ".join(self.flags + self.libs).encode())
        h.update(str(cc or compiler() or "").encode())
        if self.native:
            h.update(cpu_tag().encode())
        return cache_dir() / f"{self.source.stem}-{h.hexdigest()[:16]}-{platform.machine()}.so"

    def build_command(self, cc: str, out: Path) -> list[str]:
        """The compiler's command line."""
        return [cc, *self.flags, str(self.source), "-o", str(out), *self.libs]

    def start_build(self) -> tuple[subprocess.Popen, Path, Path] | None:
        """Start the compiler in the background when the library is not built yet; returns
        ``(process, temporary output, final path)`` for :meth:`finish_build`, or None when
        there is nothing to do (built already, or no compiler)."""
        cc = compiler()
        if cc is None:
            return None
        final = self.library_path(cc)
        if final.exists():
            return None
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.stem}.{os.getpid()}.tmp")
        proc = subprocess.Popen(self.build_command(cc, tmp), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc, tmp, final

    @staticmethod
    def finish_build(pending: tuple[subprocess.Popen, Path, Path], errors: list[str],
                     timeout: float = 300.0) -> bool:
        """Wait for :meth:`start_build`'s compiler; move the library into place. False (with
        the compiler's message appended to ``errors``) when it failed."""
        proc, tmp, final = pending
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode == 0 and tmp.exists():
            os.replace(tmp, final)
            return True
        tmp.unlink(missing_ok=True)
        errors.append(f"{' '.join(proc.args)} exited with {proc.returncode}: {out.strip()}")
        return final.exists()  # another process may have built it meanwhile

    def build(self, errors: list[str]) -> Path | None:
        """Build the library now if needed; its path, or None when no compiler is found or the
        build failed (the reason appended to ``errors``)."""
        try:
            pending = self.start_build()
        except OSError as e:  # an unwritable cache folder, a compiler that cannot start
            errors.append(f"{e}; set TWOLEVEL_CACHE_DIR to a writable folder")
            return None
        if pending is not None and not self.finish_build(pending, errors):
            return None
        path = self.library_path()
        return path if compiler() is not None and path.exists() else None


def open_library(path: Path | None, errors: list[str], source: Path) -> ctypes.CDLL:
    """The shared library at ``path``, built from ``source``; when ``path`` is None (no
    compiler, or the build failed: the last of ``errors`` says why) a :class:`TwolevelError`
    saying what to do."""
    if path is None:
        why = errors[-1] if errors else "no C compiler found (set CC, or install cc)"
        raise TwolevelError(f"cannot build the C kernels ({source.name}): {why}; install a C "
                            "compiler or set TWOLEVEL_KERNELS=numba")
    return ctypes.CDLL(str(path))
