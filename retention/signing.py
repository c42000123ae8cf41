"""Signed exports: Ed25519 keys, the detached signature of a manifest, and its verification.

The signature is detached, ``manifest.json.sig`` beside ``manifest.json``, over the manifest
file's exact bytes: nothing has to be re-encoded the same way to verify it (a canonical JSON
form would have to be reproduced by every verifier, numbers and escapes included), and standard
tools check it (``openssl pkeyutl -verify -rawin``). The signature file is JSON: the algorithm,
the id of the key that signed (SHA-256 of its raw public key, 16 hex digits) and the signature
(base64). The manifest lists every file of the export with its size and SHA-256, so the
signature covers them all.

Keys are PEM files: the private key PKCS#8 (written readable by its owner only), the public key
SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts.errors import ConfigError

ALGORITHM = "Ed25519"
SIGNATURE_SUFFIX = ".sig"


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def create_keys(private_path: str | Path) -> tuple[Path, Ed25519PublicKey]:
    """A new key pair: the private key at ``private_path`` (mode 0600, never over an existing
    file), the public key beside it as ``<name>.pub``. Returns the public key's path and key."""
    private = Path(private_path)
    public_path = private.with_name(private.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    for path in (private, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists: keys are never overwritten (move it away first)")
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ConfigError(f"cannot write {private}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_text(public_pem(key.public_key()))
    return public_path, key.public_key()


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The signing key of ``PBXPIPE_EXPORT_SIGNING_KEY``; a ConfigError naming the file if it is
    not an Ed25519 private key in PEM."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except OSError as e:
        raise ConfigError(f"cannot read signing key {p}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"signing key {p} is not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {p} is not an Ed25519 key (`pbxpipe keys create` makes one)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A verification key: an Ed25519 public key in PEM (or the private key, whose public half
    is taken)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read public key {p}: {e.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(p).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p} is not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{p} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    """The content of ``manifest.json.sig`` for the manifest's bytes."""
    return json.dumps({
        "algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest)).decode(),
    }, indent=1).encode() + b"\n"


def check_signature(public: Ed25519PublicKey, manifest: bytes, signature_file: bytes) -> str:
    """Why the signature does not hold for these manifest bytes, or "" when it does."""
    try:
        sig = json.loads(signature_file)
        algorithm, signed_by = sig["algorithm"], sig["key_id"]
        raw = base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        return "the signature file is not a pbxpipe signature (JSON: algorithm, key_id, signature)"
    if algorithm != ALGORITHM:
        return f"signed with {algorithm!r}, not {ALGORITHM}"
    if signed_by != key_id(public):
        return f"signed by key {signed_by}, not by the key given ({key_id(public)})"
    try:
        public.verify(raw, manifest)
    except InvalidSignature:
        return "the signature does not match the manifest: the manifest was altered"
    return ""
