"""Maps the architecture's directories onto import names.

- ``layers/core/ig3``       -> ``ig3``            (shared library; the Lambda core layer)
- ``functions/``            -> ``ig3_functions``  (thin Lambda handlers, one folder each)
- ``edge/greengrass/ig3_edge`` -> ``ig3_edge``    (the Greengrass v2 edge agent)
"""
from setuptools import find_packages, setup


def _mapped(where: str, top: str, as_name: str) -> tuple[list[str], dict[str, str]]:
    found = [p for p in find_packages(where) if p == top or p.startswith(top + ".")]
    names = [as_name + p[len(top):] for p in found]
    dirs = {n: f"{where}/{p.replace('.', '/')}".lstrip("./") for n, p in zip(names, found)}
    return names, dirs


packages, package_dir = [], {}
for where, top, name in (("layers/core", "ig3", "ig3"), (".", "functions", "ig3_functions"),
                         ("edge/greengrass", "ig3_edge", "ig3_edge")):
    n, d = _mapped(where, top, name)
    packages += n
    package_dir.update(d)

setup(packages=packages, package_dir=package_dir)
