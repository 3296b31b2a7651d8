"""Package list derived from the source tree, so a new subpackage can never be left out of the wheel.

`core/` installs as `ift` and `builtin_plugins/` as `ift.builtin_plugins` (see pyproject.toml).
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {"ift": "core", "ift.builtin_plugins": "builtin_plugins"}

packages = []
for name, folder in PACKAGE_DIRS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=PACKAGE_DIRS)
