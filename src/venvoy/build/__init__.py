"""Making environments: requirements, locking with uv (pylock.toml), the
content-addressed wheel cache, base images (a table of sources), and the build
itself (install into the base with the runtime at hand, assemble the image).
"""
