"""The service's CURVE key pair: ZeroMQ's own encryption for everything between the viewer kernels and the service.

The service holds a long-term key pair. A client makes a throwaway pair of its own and needs only the service's
public key, which travels the way the service's address does (an environment variable, a flag). A key file is a
ZeroMQ secret certificate (the format `zmq.auth.create_certificates` writes), readable by its owner only. CURVE
encrypts; the shared key every request carries still decides who may ask.
"""

from __future__ import annotations

import datetime
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from ..errors import KeyFileError, SettingsError
from .protocol import PUBLIC_KEY_ENV, SECRET_KEY_ENV

KEY_LENGTH = 40  # a Curve25519 key of 32 bytes, written in Z85 (ZeroMQ's printable encoding)


def check_key(text, what: str) -> str:
    """`text` if it is a key in Z85 (40 characters); a SettingsError saying what is wrong otherwise."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or len(text.strip()) != KEY_LENGTH:
        shown = f"{len(text.strip())} characters" if isinstance(text, str) else type(text).__name__
        raise SettingsError(f"{what} must be the {KEY_LENGTH} characters `attention-explorer serve` prints, "
                            f"not {shown}")
    text = text.strip()
    try:
        z85.decode(text.encode("ascii"))
    except (ValueError, KeyError, UnicodeEncodeError, struct.error):
        raise SettingsError(f"{what} is not a key: it has characters a ZeroMQ key (Z85) never has") from None
    return text


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair in Z85: `public` is what clients are given, `secret` never leaves the service."""

    public: str
    secret: str

    @classmethod
    def new(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode("ascii"), secret.decode("ascii"))

    @classmethod
    def from_secret(cls, secret: str, what: str) -> KeyPair:
        secret = check_key(secret, what)
        return cls(zmq.curve_public(secret.encode("ascii")).decode("ascii"), secret)

    @classmethod
    def read(cls, path: Path) -> KeyPair:
        """The pair in a secret certificate file; refused if others may read it, or if it is not one."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise KeyFileError(f"cannot read the key file {path}: {e.strerror}") from None
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"the key file {path} is not a file")
        if os.name != "nt" and mode & 0o077:
            raise KeyFileError(
                f"the key file {path} can be read by other users (permissions {stat.S_IMODE(mode):04o}): its secret "
                f"key may have been seen. Make a new one (delete the file; serve makes another), or, if nobody else "
                f"uses this machine, `chmod 600 {path}`")
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (ValueError, IndexError, OSError) as e:
            raise KeyFileError(f"the key file {path} is not a ZeroMQ certificate ({e})") from None
        if secret is None:
            raise KeyFileError(f"the key file {path} holds a public key only: give the secret certificate "
                               "(the .key_secret file of zmq.auth.create_certificates)")
        try:
            pair = cls.from_secret(secret.decode("ascii", "replace"), f"the secret key in {path}")
            check_key(public, f"the public key in {path}")
        except SettingsError as e:
            raise KeyFileError(f"the key file {path} is corrupt: {e}") from None
        if pair.public != public.decode("ascii"):
            raise KeyFileError(f"the key file {path} is corrupt: its public key is not the one of its secret key")
        return pair

    def write(self, path: Path) -> KeyPair:
        """Write the pair to a new secret certificate at `path`, readable and writable by its owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = (f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by attention-explorer  ****\n"
                "#   ZeroMQ CURVE **Secret** Certificate: the generation service's key pair\n"
                "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
                f"metadata\ncurve\n    public-key = \"{self.public}\"\n    secret-key = \"{self.secret}\"\n")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise KeyFileError(f"cannot make the key file {path}: {e.strerror}") from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        return self


def service_key_pair(key_file: Path | None = None) -> KeyPair:
    """The service's pair: read from `key_file` (made there the first time), else the one a dashboard handed its
    service in $ATTENTION_EXPLORER_SERVICE_SECRET_KEY, else a new one."""
    if key_file is not None:
        key_file = Path(key_file).expanduser()
        return KeyPair.read(key_file) if os.path.lexists(key_file) else KeyPair.new().write(key_file)
    if secret := os.environ.get(SECRET_KEY_ENV):
        return KeyPair.from_secret(secret, f"${SECRET_KEY_ENV}")
    return KeyPair.new()


def public_key_from(value: str | None, what: str = f"${PUBLIC_KEY_ENV}") -> str | None:
    """A service's public key as given to a client (None when not given), checked."""
    return check_key(value, what) if value else None
