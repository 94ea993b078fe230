"""Data layer of umdbench: image loading, answer normalisation, dataset helpers.

Kept import-light on purpose: import the submodules you need (``umdbench.data.images`` etc.).
"""
