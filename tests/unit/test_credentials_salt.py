"""builder.site.credentials: creating the site's salt file (mutation survivors of issue 18).

Each test names the mutant it kills (tests/MUTATION.md): the temp file must be made beside
the salt (a hard link cannot cross filesystems, and $TMPDIR may not even exist), missing
parent directories are created, a salt another render linked first is kept, and a salt file
that cannot be made or read is a clear error naming the file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt

from builder.errors import BuilderError
from builder.site import credentials
from builder.site.credentials import CRYPT_ALPHABET, SALT_LENGTH, _create_salt


def is_salt(text: str) -> bool:
    return len(text) == SALT_LENGTH and all(c in CRYPT_ALPHABET for c in text)


def test_the_temp_file_is_made_beside_the_salt_not_in_tmpdir(tmp_path, monkeypatch):
    # kills mkstemp(dir=None): with $TMPDIR pointing nowhere, only a temp file beside the
    # target can be made (and only one there can be hard-linked on every filesystem)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    made: list[str] = []
    real = tempfile.mkstemp

    def spy(*a, **k):
        fd, name = real(*a, **k)
        made.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    path = tmp_path / "profiles" / ".secrets" / "lab.salt"
    _create_salt(path)
    assert is_salt(path.read_text().rstrip("\n")) and path.read_text().endswith("\n")
    assert [Path(m).parent for m in made] == [path.parent]
    assert Path(made[0]).name.startswith(".salt.")
    assert sorted(os.listdir(path.parent)) == ["lab.salt"]  # the temp name is gone
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_parent_directories_are_created_0700(tmp_path):
    # kills mkdir(parents=False) and mode mutants
    path = tmp_path / "a" / "b" / ".secrets" / "lab.salt"
    _create_salt(path)
    assert is_salt(path.read_text().strip())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_salt_linked_first_by_another_render_is_kept(tmp_path):
    # kills suppress(None) / suppress(FileNotFoundError): the other render's salt wins
    path = tmp_path / ".secrets" / "lab.salt"
    path.parent.mkdir(mode=0o700)
    path.write_text("abcdefghABCDEFGH\n")
    _create_salt(path)  # lost the race: no error, nothing replaced, no temp file left
    assert path.read_text() == "abcdefghABCDEFGH\n"
    assert os.listdir(path.parent) == ["lab.salt"]


def test_a_salt_that_cannot_be_made_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "profiles"
    blocker.write_text("a file where the directory should be\n")
    with pytest.raises(BuilderError) as exc:
        _create_salt(blocker / ".secrets" / "lab.salt")
    assert exc.value.message == (
        "profiles/.secrets/lab.salt: cannot create the site's salt: Not a directory"
    )
    assert exc.value.hint == ("create it yourself: 16 random characters of ./0-9A-Za-z, mode 0600")


def test_every_salt_character_is_from_the_crypt_alphabet_and_they_differ(tmp_path):
    salts = set()
    for i in range(20):
        p = tmp_path / f"s{i}" / "x.salt"
        _create_salt(p)
        salts.add(p.read_text().strip())
    assert len(salts) == 20 and all(is_salt(s) for s in salts)
    # the salt characters and size passlib's sha512_crypt accepts (salt_chars, max_salt_size);
    # crypt(5) of libxcrypt 4.4.33 allows any character but `$`, `:` and newline, 1-16 of them
    assert sha512_crypt.salt_chars == credentials.CRYPT_ALPHABET
    assert credentials.SALT_LENGTH == sha512_crypt.max_salt_size == 16


def test_creating_the_salt_tells_the_operator_to_keep_it(tmp_path, caplog):
    path = tmp_path / ".secrets" / "lab.salt"
    with caplog.at_level("INFO", logger="builder.render"):
        _create_salt(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"created {path} (the admin password's salt for this site; keep it)"
    ]


@pytest.mark.parametrize(
    "stored",
    [
        "abcdefghABCDEFG$",  # 16 characters, one not in ./0-9A-Za-z
        "abcdefghABCDEFG",  # the alphabet, 15 characters
        "abcdefghABCDEFGHI",  # 17
    ],
)
def test_a_salt_file_wrong_in_one_way_is_refused_with_the_fix(workdir, stored):
    from builder.site.profile import load_profile

    secrets = workdir / "profiles/.secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "onprem.salt").write_text(stored + "\n")
    with pytest.raises(BuilderError) as exc:
        credentials.site_salt(load_profile("onprem"))
    assert exc.value.message == (
        "profiles/.secrets/onprem.salt: not a salt (16 characters of ./0-9A-Za-z)"
    )
    assert exc.value.hint == (
        "delete it and render again: a new salt is created (the password hash changes, "
        "the password does not)"
    )


def test_an_unreadable_salt_file_is_a_clear_error(workdir):
    from builder.site.profile import load_profile

    (workdir / "profiles/.secrets/onprem.salt").mkdir(parents=True)  # exists, cannot be read
    with pytest.raises(BuilderError) as exc:
        credentials.site_salt(load_profile("onprem"))
    assert exc.value.message == (
        "profiles/.secrets/onprem.salt: cannot read the site's salt: Is a directory"
    )
