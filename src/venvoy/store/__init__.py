"""The one store (``VENVOY_HOME``): its layout, defined once; environment records,
checked on read; each runtime's cached form of an image, bound to its verified
image ID; images from outside venvoy (``run --image``: a local store, a registry,
a tar) brought in once; and the stat-only fast path ``venvoy run`` uses.
"""
