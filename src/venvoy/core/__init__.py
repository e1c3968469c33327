"""The bottom layer: errors, file-system primitives (atomic writes, locks, stale
temporaries), names, paths, config, platform facts (architectures, Python
versions), progress and the version. Imports nothing else of venvoy.
"""
