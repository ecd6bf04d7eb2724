"""Builds kbook's native core (``kbook/_native.c``); everything else is in ``pyproject.toml``.

The extension is optional: where no C compiler is found the build goes on without it and replay
runs its pure-Python path (``kbook.lines``), with the same output, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kbook._native",
            sources=["kbook/_native.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
