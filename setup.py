"""Builds the Cython kernels in kernels/ as fastconv.kernels.* extensions.

OpenMP is used when the compiler accepts -fopenmp (checked by compiling a tiny
program); otherwise, or with FASTCONV_NO_OPENMP=1, the kernels build serial.
"""
import os
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_TEST = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def compiler_has_openmp(compiler) -> bool:
    if os.environ.get("FASTCONV_NO_OPENMP") == "1":
        return False
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "openmp_test.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, os.path.join(tmp, "openmp_test"), extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        openmp = compiler_has_openmp(self.compiler)
        print(f"fastconv: building Cython kernels {'with' if openmp else 'without'} OpenMP")
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3"] + (["-fopenmp"] if openmp else [])
            ext.extra_link_args = ["-fopenmp"] if openmp else []
        super().build_extensions()


extensions = [
    Extension(
        "fastconv.kernels.im2col",
        ["kernels/im2col.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
