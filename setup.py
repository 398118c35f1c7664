"""Packaging for the DynamicVis Sentinel-2 embedding pipeline.

Also used by Dataflow's ``--setup_file`` to install the project on workers when no custom container is used.
"""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def _requirements() -> list:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]


setup(
    name="dynamicvis-s2-embeddings",
    version="0.1.0",
    description="DynamicVis embeddings of Sentinel-2 RGB from Earth Engine, as an Apache Beam pipeline",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline*", "transforms*", "models*", "earth_engine*", "tiles*"]),
    install_requires=_requirements(),
    entry_points={"console_scripts": ["dynamicvis-embed=pipeline.__main__:main"]},
)
