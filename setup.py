"""Build twolevel's C kernels with the package (setuptools ``ext_modules``).

Everything else about the package is declared in ``pyproject.toml``; this file only adds the
compiled kernels, because a list of C extensions with per-compiler flags and try-compiles is code,
not configuration. docs/developer.md says why setuptools and how to add a kernel.

Each kernel is a plain C file exporting ``twolevel_*`` functions that Python calls through
:mod:`ctypes` (:mod:`twolevel.models.native` finds and loads the library); setuptools builds it
as an extension module so that the wheel carries it, tagged for its platform, and an editable
install (``pip install -e .``, ``make setup``) builds it in place beside its ``.py`` wrapper.

On x86-64 each dispatched kernel is built three times: the baseline (x86-64: SSE2), ``_avx2``
(AVX2 + FMA) and ``_avx512`` (AVX-512 F/DQ/VL/BW); at run time the loader takes the widest one
the processor (and operating system) supports, or the baseline when ``TWOLEVEL_KERNEL_BASELINE=1``.
Never ``-march=native``: the wheel runs on every machine of its architecture. OpenMP
(``-fopenmp``) and glibc's vector maths (``-lmvec``) are used when a try-compile shows the
compiler and system have them; otherwise the kernels run on one thread with scalar ``exp``/``log``.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from dataclasses import dataclass

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


@dataclass(frozen=True)
class Kernel:
    """One C kernel: ``module`` (its dotted name in the installed package; the library is found
    beside that package's ``.py`` files), ``source`` (repository path), ``flags`` (extra compiler
    flags for GCC/Clang), ``dispatch`` (build the AVX2/AVX-512 variants on x86-64), ``openmp`` and
    ``mvec`` (use them when available)."""

    module: str
    source: str
    flags: tuple[str, ...] = ()
    dispatch: bool = True
    openmp: bool = False
    mvec: bool = False


# The kernels: a new one is one line here (and its Python wrapper calling
# twolevel.models.native.load("<module>")).
KERNELS = [
    Kernel("twolevel.models._cpu", "models/cpu.c", dispatch=False),
    Kernel("twolevel.models.glmm._cpirls", "models/glmm/cpirls.c",
           ("-O3", "-fno-math-errno"), openmp=True, mvec=True),
    Kernel("twolevel.models.bayes._ckernels", "models/bayes/ckernels.c",
           ("-O2", "-fno-fast-math", "-ffp-contract=off")),
    Kernel("twolevel.models.lmm._creml", "models/lmm/creml.c", ("-O3", "-ffp-contract=off")),
    Kernel("twolevel.models.lmm._cnested", "models/lmm/cnested.c",
           ("-O3", "-ffp-contract=off", "-fno-semantic-interposition", "-fno-tree-vectorize")),
    Kernel("twolevel.models.bayes._cagq", "models/bayes/cagq.c", ("-O2", "-fno-fast-math"),
           openmp=True, mvec=True),
]

# x86-64 variants: suffix → GCC/Clang flags (the loader's names: twolevel.models.native.VARIANTS)
VARIANTS = {
    "_avx2": ("-mavx2", "-mfma"),
    "_avx512": ("-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma"),
}
X86_64 = platform.machine().lower() in {"x86_64", "amd64"} and sys.platform != "win32"


def _extensions() -> list[Extension]:
    out = []
    for k in KERNELS:
        for suffix in ("", *(VARIANTS if k.dispatch and X86_64 else ())):
            name = k.module + suffix
            ext = Extension(name, [k.source], libraries=[] if os.name == "nt" else ["m"],
                            define_macros=[("TWOLEVEL_PYINIT", "PyInit_" + name.rsplit(".")[-1])])
            ext.twolevel = (k, suffix)  # read by BuildKernels
            out.append(ext)
    return out


class BuildKernels(build_ext):
    """setuptools' ``build_ext`` with the kernels' flags chosen by try-compiles: OpenMP, libmvec
    and each x86-64 variant's instruction set are used only where the compiler accepts them (a
    variant the compiler cannot build is left out; the loader then takes the next one)."""

    def _try(self, flags: list[str], libs: list[str], code: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "try.c")
            with open(src, "w") as fh:
                fh.write(code)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                self.compiler.link_shared_object(objs, os.path.join(tmp, "try.so"),
                                                 libraries=libs, extra_postargs=flags)
            except Exception:  # noqa: BLE001 - any failure means "not available"
                return False
        return True

    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        omp = unix and self._try(["-fopenmp"], [], "#include <omp.h>\nint f(void){return "
                                 "omp_get_max_threads();}\n")
        mvec = unix and sys.platform.startswith("linux") and self._try(
            ["-O2", "-fopenmp-simd"], ["mvec", "m"],
            "#include <math.h>\n#pragma omp declare simd notinbranch\nextern double exp(double);\n"
            "void f(double *x){\n#pragma omp simd\nfor(int i=0;i<64;i++) x[i]=exp(x[i]);}\n")
        ok_variant = {s: unix and self._try(list(f), [], "int f(void){return 0;}\n")
                      for s, f in VARIANTS.items()}
        keep = []
        for ext in self.extensions:
            k, suffix = ext.twolevel
            if suffix and not ok_variant[suffix]:
                print(f"twolevel: leaving out {ext.name}: the compiler has no {suffix[1:]}")
                continue
            flags = list(k.flags) if unix else ["/O2"]
            if suffix:
                flags += VARIANTS[suffix]
            if k.openmp:
                flags += ["-fopenmp"] if omp else []
            if k.mvec and mvec:
                flags += ["-DTWOLEVEL_MVEC"] + ([] if omp else ["-fopenmp-simd"])
                ext.libraries = ["mvec", *ext.libraries]
            ext.extra_compile_args = flags
            ext.extra_link_args = ["-fopenmp"] if k.openmp and omp else []
            keep.append(ext)
        self.extensions = keep
        print(f"twolevel: kernels with OpenMP: {omp}; libmvec: {mvec}; x86-64 variants: "
              f"{[s[1:] for s, v in ok_variant.items() if v and X86_64]}")
        super().build_extensions()


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildKernels})
