"""Secrets read from files, by one rule for every option that names one (`--sql-password-file`, push exporters'
`password_file` and `token_file`): the file's first line, blanks around it removed; nothing else of the file."""

from __future__ import annotations

from pathlib import Path


class SecretFileError(ValueError):
    """A secret file that cannot be read, or holds no secret; the message names the file, never the secret."""


def read_secret(path: Path | str) -> str:
    """The secret in `path`; raises SecretFileError if it cannot be read or its first line is blank."""
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretFileError(f"cannot read the secret file {path}: {reason}") from None
    if not secret:
        raise SecretFileError(f"the secret file {path} is empty (its first line holds the secret)")
    return secret


def secret_setting(setting: str, value: str, file: str) -> str:
    """The secret of an exporter's `<setting>` or `<setting>_file` (read by read_secret); ValueError naming the
    setting if both are set, SecretFileError naming `<setting>_file` if the file fails."""
    if value and file:
        raise ValueError(f"{setting}, {setting}_file: set only one of them")
    if not file:
        return value
    try:
        return read_secret(file)
    except SecretFileError as exc:
        raise SecretFileError(f"{setting}_file: {exc}") from None
