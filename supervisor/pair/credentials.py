"""IMAP logins for check and repair, from a file only root can read (never argv, never logs).

The file uses imapd.conf's own ``key: value`` form, which Cyrus admins know::

    # an admin of both servers (it acts as each user through SASL PLAIN authorization)
    user: cyrus
    password: secret
    # optional per side: master_user, master_password, <link>_user, <link>_password

systemd credentials take precedence: with ``LoadCredential=imap:/path`` (or an encrypted
``LoadCredentialEncrypted=``) in a drop-in, the unit reads ``$CREDENTIALS_DIRECTORY/imap``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .imapclient import Login

SYSTEMD_CREDENTIAL = "imap"


class CredentialsError(Exception):
    pass


def parse(text: str, source: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or not key:
            # Show the line number only: the line may hold a password.
            raise CredentialsError(f"{source}: line {number}: expected 'key: value'")
        if key in values:
            raise CredentialsError(f"{source}: line {number}: {key} given twice")
        values[key] = value.strip()
    return values


def _check_private(path: Path) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"{path}: readable by others (mode {stat.S_IMODE(st.st_mode):04o});"
                               f" it holds a password: chown root {path}; chmod 600 {path}")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise CredentialsError(f"{path}: owned by uid {st.st_uid}, not root; chown root {path}")


def load(path: Path, sides: list[str], env: dict | None = None) -> dict[str, Login]:
    """{side: Login} for each side ("master" and link names); CredentialsError if unusable."""
    env = os.environ if env is None else env
    path = Path(path)
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / SYSTEMD_CREDENTIAL).is_file():
        path = Path(cred_dir) / SYSTEMD_CREDENTIAL   # systemd made it private to this unit
    else:
        try:
            _check_private(path)
        except FileNotFoundError:
            raise CredentialsError(f"{path}: no such file (check.credentials)") from None
        except OSError as exc:
            raise CredentialsError(f"{path}: {exc.strerror}") from None
    try:
        values = parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") \
            from None
    known = {"user", "password"} | {f"{s}_{k}" for s in sides for k in ("user", "password")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CredentialsError(f"{path}: unknown key(s) {', '.join(unknown)} (known: user,"
                               " password, and <side>_user, <side>_password for the sides"
                               f" {', '.join(sides)})")
    logins = {}
    for side in sides:
        user = values.get(f"{side}_user", values.get("user"))
        password = values.get(f"{side}_password", values.get("password"))
        if not user or password is None:
            raise CredentialsError(f"{path}: no login for {side}: set user and password"
                                   f" (or {side}_user and {side}_password)")
        logins[side] = Login(user, password)
    return logins
