"""Images as data, no runtime involved: the one bounded tar reader for untrusted
input, compression, reading and writing Docker/OCI archives (one platform rule),
unpacking layers safely (Charliecloud), and the labels venvoy writes.
"""
