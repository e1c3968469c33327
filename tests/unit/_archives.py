"""Builders for small Docker-archive and OCI-layout image tars used by the tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

# Entries: ("file", name, text) | ("dir", name) | ("sym", name, target)
#          | ("hard", name, target) | ("chr", name) | ("fifo", name)


def layer_tar(entries, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                data = rest[0].encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    data = buf.getvalue()
    return gzip.compress(data) if compress else data


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, layers: list[bytes], env=("PATH=/usr/local/bin:/usr/bin",),
                   tags=("demo:1",)) -> Path:
    with tarfile.open(path, "w") as tar:
        names = []
        for i, data in enumerate(layers):
            names.append(f"{i:02d}abc/layer.tar")
            _add(tar, names[-1], data)
        config = {"architecture": "amd64", "config": {"Env": list(env), "Cmd": ["sh"]}}
        _add(tar, "cfg.json", json.dumps(config).encode())
        manifest = [{"Config": "cfg.json", "RepoTags": list(tags), "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def oci_archive(path: Path, layers: list[bytes], env=("LANG=C.UTF-8",),
                nested: bool = False) -> Path:
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    config = blob(json.dumps({"config": {"Env": list(env)}}).encode())
    manifest = blob(json.dumps({"schemaVersion": 2, "config": config,
                                "layers": [blob(layer) for layer in layers]}).encode())
    if nested:  # an index of platforms inside index.json's first entry
        manifest = blob(json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode())
    index = {"schemaVersion": 2, "manifests": [
        {**manifest, "annotations": {"org.opencontainers.image.ref.name": "demo:oci"}}]}
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            algo, hexd = digest.split(":")
            _add(tar, f"blobs/{algo}/{hexd}", data)
    return path
