"""Kernel sources, apart from their framework bindings (see README.md)."""
