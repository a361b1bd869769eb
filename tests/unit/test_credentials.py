"""The IMAP credentials file: root-only, strict, per-side overrides, systemd credentials."""

import pytest

from supervisor.pair.credentials import CredentialsError, load


def write(tmp_path, text, mode=0o600):
    path = tmp_path / "imap-credentials"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_one_login_for_both_sides(tmp_path):
    path = write(tmp_path, "# admin of both\nuser: cyrus\npassword: s3:cr et\n")
    logins = load(path, ["master", "replica1"], env={})
    assert logins["master"].user == "cyrus" and logins["replica1"].password == "s3:cr et"


def test_per_side_login(tmp_path):
    path = write(tmp_path, "user: cyrus\npassword: a\nreplica1_user: admin2\nreplica1_password: b\n")
    logins = load(path, ["master", "replica1"], env={})
    assert (logins["master"].password, logins["replica1"].user) == ("a", "admin2")


def test_readable_by_others_is_refused(tmp_path):
    path = write(tmp_path, "user: cyrus\npassword: a\n", mode=0o644)
    with pytest.raises(CredentialsError, match=r"readable by others \(mode 0644\).*chmod 600"):
        load(path, ["master"], env={})


def test_errors_never_show_the_password(tmp_path):
    path = write(tmp_path, "user: cyrus\nhunter2\n")
    with pytest.raises(CredentialsError) as info:
        load(path, ["master"], env={})
    assert "hunter2" not in str(info.value) and "line 2" in str(info.value)
    path = write(tmp_path, "user: cyrus\npasword: x\n")
    with pytest.raises(CredentialsError, match="unknown key.*pasword"):
        load(path, ["master"], env={})
    path = write(tmp_path, "user: cyrus\n")
    with pytest.raises(CredentialsError, match="no login for master"):
        load(path, ["master"], env={})
    with pytest.raises(CredentialsError, match="no such file"):
        load(tmp_path / "missing", ["master"], env={})


def test_systemd_credentials_win(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "imap").write_text("user: fromsystemd\npassword: x\n")
    logins = load(tmp_path / "missing", ["master"], env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert logins["master"].user == "fromsystemd"
