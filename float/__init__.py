"""FLOAT model package: pure torch, no file formats.

Import submodules explicitly (``from float.fmt import FlowMatchingTransformer``);
never ``import float``, which would hide the builtin.
"""
