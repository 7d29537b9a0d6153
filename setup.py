"""Packaging metadata and dependencies of exec-server (tool settings: setup.cfg)."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(HERE, "exec_server", "__init__.py"), encoding="utf-8") as handle:
        return re.search(r'^__version__ = "([^"]+)"', handle.read(), re.M).group(1)


with open(os.path.join(HERE, "README.rst"), encoding="utf-8") as handle:
    LONG_DESCRIPTION = handle.read()

setup(
    name="exec-server",
    version=read_version(),
    description="JSON-RPC remote-execution server and blocking client, wire-compatible with codex exec-server",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["exec_server", "exec_server.*", "fs_helper"]) + ["exec_server.schemas"],
    # The top-level schemas/ folder ships inside the wheel as exec_server/schemas.
    package_dir={"exec_server.schemas": "schemas"},
    package_data={"exec_server.schemas": ["*.json", "*/*.json"]},
    install_requires=[
        "simple-websocket>=1.0",
        "wsproto>=1.2",
        "h11>=0.11",  # wsproto's HTTP/1.1 parser: the client's header check catches its errors (wsproto 1.2 needs 0.11)
        "werkzeug>=2.3",
        "jsonschema>=4.18",
        # compiled params checks: a cold start does not import jsonschema for a valid request
        "fastjsonschema>=2.21",
        "psutil>=5.9",
        "opentelemetry-api>=1.20",
        "PyJWT>=2.12",  # jwt.decode_complete (2.10), critical header parameters refused (2.12)
        # SIMD base64 for every output chunk, both ways (~40x the standard library's speed)
        "pybase64>=1.3",
        # the init of each process's PID namespace (--linux-sandbox-pid-namespace isolate)
        "dumb-init>=1.2.5; sys_platform == 'linux'",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1", "opentelemetry-sdk>=1.20", "opentelemetry-distro>=0.41b0",
                 "hypothesis>=6", "trustme>=1.0"],
        "windows": ["pywinpty>=2; sys_platform == 'win32'", "pywin32>=306; sys_platform == 'win32'"],
    },
    entry_points={"console_scripts": ["exec-server = exec_server.cli:console_main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX",
        "Operating System :: Microsoft :: Windows",
    ],
)
