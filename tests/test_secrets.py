"""The one rule for secrets read from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.secrets import SecretFileError, read_secret


@pytest.mark.parametrize(
    ("content", "secret"),
    [("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("  s3cret \r\nsecond line\n", "s3cret"), ("p:w=#\n", "p:w=#")],
)
def test_the_secret_is_the_first_line_without_blanks_around_it(tmp_path: Path, content: str, secret: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content, encoding="utf-8")
    assert read_secret(path) == secret


@pytest.mark.parametrize("content", ["", "\n", "   \nlater\n"])
def test_an_empty_first_line_is_an_error_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SecretFileError, match=f"{path} is empty"):
        read_secret(path)


def test_an_unreadable_file_is_an_error_naming_it_and_never_its_content(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SecretFileError, match=f"cannot read the secret file {missing}: No such file"):
        read_secret(missing)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfepassword\n")
    with pytest.raises(SecretFileError, match="UnicodeDecodeError") as error:
        read_secret(binary)
    assert "password" not in str(error.value)
