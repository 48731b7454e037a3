from setuptools import find_packages, setup

setup(name="adet", version="0.1.0", packages=find_packages(exclude=("tests", "configs", "tools")), python_requires=">=3.9")
