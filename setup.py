"""Packaging glue pyproject.toml cannot express: the Hydra configs live at the top of the repository
(``conf/``, next to ``train.py``) and ship inside the wheel as ``ssmlit/conf/`` (see
``ssmlit.utils.config_dir``). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ssmlit", "ssmlit.*"]), "ssmlit.conf"],
    package_dir={"ssmlit.conf": "conf"},
    package_data={"ssmlit.conf": ["*.yaml", "**/*.yaml"]},
)
