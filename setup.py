"""Only the package list, which pyproject.toml cannot say: packages.find cannot add a package
whose folder lives elsewhere (package-dir maps eventbatch.migrations to the top-level
migrations/), and a fixed list would silently drop every new eventbatch subpackage."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["eventbatch", "eventbatch.*"]), "eventbatch.migrations"])
