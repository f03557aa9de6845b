"""Settings: precedence, checks that name the setting to fix, and no password shown."""

from pathlib import Path

import pytest

from kit.settings import Settings, SettingsError, load_settings, mask_url

EXAMPLE = Path(__file__).resolve().parent.parent / "default_settings.py.example"


def write_settings(tmp_path: Path, text: str) -> Path:
    """A default_settings.py made as the README says: private to its owner."""
    path = tmp_path / "default_settings.py"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_defaults_send_to_the_local_inbox(tmp_path: Path) -> None:
    settings = load_settings({}, tmp_path / "absent.py")
    assert settings == Settings()
    assert (settings.MAIL_HOST, settings.MAIL_PORT, settings.MAIL_SECURITY) == (
        "127.0.0.1",
        8025,
        "none",
    )
    assert settings.CELERY_BROKER_URL == "pyamqp://guest@localhost//"
    assert settings.WORK_SECONDS == 5
    assert settings.uses_local_inbox


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    path = write_settings(tmp_path, "WORK_SECONDS = 2\nMAIL_PORT = 2525\nCELERY_QUEUE = 'file'\n")
    settings = load_settings({"WORK_SECONDS": "0.5", "CELERY_QUEUE": "env"}, path)
    assert settings.WORK_SECONDS == 0.5  # environment wins
    assert settings.CELERY_QUEUE == "env"
    assert settings.MAIL_PORT == 2525  # file wins over the default
    assert settings.MAIL_SECURITY == "none"  # default where neither says


def test_settings_file_path_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write_settings(tmp_path, "CELERY_QUEUE = 'from-file'\n")
    settings = load_settings({"MAILASYNC_SETTINGS_FILE": str(path)})
    assert settings.CELERY_QUEUE == "from-file"


def test_example_file_is_valid_and_changes_nothing(tmp_path: Path) -> None:
    assert load_settings({}, write_settings(tmp_path, EXAMPLE.read_text())) == Settings()


def test_filled_in_gmail_block_is_accepted(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for placeholder, value in (
        ("<your-address@gmail.com>", "learner@gmail.com"),
        ("<your-16-letter-app-password>", "abcd efgh ijkl mnop"),
    ):
        text = text.replace(placeholder, value)
    block = text.split("Mail: Gmail", 1)[1].split("Mail: behaviour", 1)[0]
    gmail = [line[2:] for line in block.splitlines() if line.startswith("# MAIL_")]
    assert len(gmail) == 5
    settings = load_settings({}, write_settings(tmp_path, "\n".join(gmail)))
    assert (settings.MAIL_HOST, settings.MAIL_PORT, settings.MAIL_SECURITY) == (
        "smtp.gmail.com",
        465,
        "ssl",
    )
    assert not settings.uses_local_inbox


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            "MAIL_USERNAME = '<your-address@gmail.com>'\nMAIL_HOST = 'smtp.gmail.com'\n",
            "MAIL_USERNAME",
        ),
        (
            "MAIL_USERNAME = 'me@gmail.com'\nMAIL_PASSWORD = '<your-16-letter-app-password>'\n"
            "MAIL_HOST = 'smtp.gmail.com'\nMAIL_PORT = 465\nMAIL_SECURITY = 'ssl'\n",
            "MAIL_PASSWORD",
        ),
        ("MAIL_USERNAME = 'me@gmail.com'\nMAIL_HOST = 'smtp.gmail.com'\n", "MAIL_PASSWORD"),
        ("MAIL_SECURITY = 'tls'\n", "MAIL_SECURITY"),
        ("MAIL_PORT = 'smtp'\n", "MAIL_PORT"),
        ("MAIL_PORT = 70000\n", "MAIL_PORT"),
        ("WORK_SECONDS = -1\n", "WORK_SECONDS"),
    ],
)
def test_bad_settings_fail_naming_the_setting(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings({}, write_settings(tmp_path, text))


def test_password_is_never_in_repr_or_errors(tmp_path: Path) -> None:
    secret = "s3cr3t-app-password"
    settings = load_settings(
        {
            "MAIL_HOST": "smtp.gmail.com",
            "MAIL_PORT": "465",
            "MAIL_SECURITY": "ssl",
            "MAIL_USERNAME": "me@gmail.com",
            "MAIL_PASSWORD": secret,
            "CELERY_BROKER_URL": f"pyamqp://user:{secret}@broker//",
        },
        tmp_path / "absent.py",
    )
    assert settings.MAIL_PASSWORD == secret
    assert secret not in repr(settings)
    assert secret not in str(settings)
    assert "***" in repr(settings)
    with pytest.raises(SettingsError) as caught:
        load_settings({"MAIL_PASSWORD": secret, "MAIL_SECURITY": "bogus"}, tmp_path / "absent.py")
    assert secret not in str(caught.value)


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("amqp://u:pw@host:5672/v") == "amqp://u:***@host:5672/v"
    assert mask_url("pyamqp://guest@localhost//") == "pyamqp://guest@localhost//"
    assert mask_url("filesystem://") == "filesystem://"


def test_a_settings_file_others_can_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    path = tmp_path / "default_settings.py"
    path.write_text("MAIL_USERNAME = 'me@example.org'\n")
    path.chmod(0o644)
    with pytest.raises(SettingsError, match=f"chmod 600 {path}"):
        load_settings({}, path)
    path.chmod(0o600)
    assert load_settings({}, path).MAIL_USERNAME == "me@example.org"


def test_reading_the_settings_file_leaves_no_bytecode_copy(tmp_path: Path) -> None:
    path = tmp_path / "default_settings.py"
    path.write_text("MAIL_USERNAME = 'me@example.org'\n")
    path.chmod(0o600)
    load_settings({}, path)
    assert not (tmp_path / "__pycache__").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["default_settings.py"]


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"WORK_SECONDS": "900"}, "WORK_SECONDS"),  # a run of 15+ minutes against 30
        ({"MAIL_RETRY_BACKOFF_MAX": "1200"}, "MAIL_RETRY_BACKOFF_MAX"),
        ({"BROKER_CONSUMER_TIMEOUT": "120"}, "BROKER_CONSUMER_TIMEOUT"),
        ({"LEDGER_EXPIRES": "3600"}, "LEDGER_EXPIRES"),  # shorter than a retry window
    ],
)
def test_nothing_is_held_near_rabbitmqs_consumer_timeout(environ: dict, named: str) -> None:
    """A run or a wait near consumer_timeout would end in redelivery loops: refused."""
    with pytest.raises(SettingsError, match=named):
        load_settings(environ, settings_file=Path("/nonexistent"))


def test_the_default_retry_window_outlasts_an_hour_of_outage() -> None:
    from kit.settings import retry_window

    defaults = load_settings({}, settings_file=Path("/nonexistent"))
    shortest, longest = retry_window(defaults)
    assert 3600 <= shortest < longest <= 3 * 3600
    # The old defaults (8 retries from 1 s up to 60 s) gave up within minutes.
    old = load_settings(
        {"MAIL_RETRY_MAX": "8", "MAIL_RETRY_BACKOFF": "1", "MAIL_RETRY_BACKOFF_MAX": "60"},
        settings_file=Path("/nonexistent"),
    )
    assert retry_window(old)[1] < 300
