"""Build the Cython hot path (ext/*.pyx) into the bwfast package.

There is no pure-Python fallback: a failed compile fails the install, so a
slow broker can never pass for a fast one.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = [
    Extension("bwfast.packet", ["ext/packet.pyx"]),
    Extension("bwfast.topics", ["ext/topics.pyx"]),
    Extension("bwfast.fastpath", ["ext/fastpath.pyx"]),
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
