"""`--config FILE.toml` for the coordinator and worker, and function objects as call jobs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from tcpsched.client_specs import function_name
from tcpsched.config import coordinator_settings, worker_settings
from tcpsched.errors import ConfigError, RequestError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


def test_every_flag_is_a_key_with_dashes_or_underscores(tmp_path: Path) -> None:
    """Keys are the flags without their dashes; '-' and '_' are alike; lists for repeatables."""
    path = write(tmp_path, 'id = 2\nlisten = "127.0.0.1:7102"\nheartbeat_interval = 0.25\n'
                 '"heartbeat-timeout" = 3\npeer = ["1@127.0.0.1:7101"]\nfsync = "never"\n'
                 'repair = true\n')
    settings, _args = coordinator_settings(["--config", path])
    assert settings.node_id == 2 and settings.listen == ("127.0.0.1", 7102)
    assert settings.heartbeat_interval_s == 0.25 and settings.heartbeat_timeout_s == 3.0
    assert settings.peers == ((1, "127.0.0.1:7101"),) and settings.fsync == "never"
    assert settings.repair is True


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Precedence: flag > file > environment > default, also for repeatable flags."""
    monkeypatch.setenv("TCPSCHED_COORDINATORS", "127.0.0.1:7999")
    path = write(tmp_path, 'slots = 8\nname = "from-file"\ntags = ["gpu", "ssd"]\n'
                 'coordinators = "127.0.0.1:7201"\nallow_call = ["math"]\n')
    from_file = worker_settings(["--config", path])
    assert from_file.slots == 8 and from_file.name == "from-file"
    assert from_file.tags == ("gpu", "ssd") and from_file.coordinators == ("127.0.0.1:7201",)
    assert from_file.allow_call == ("math",)
    flags = worker_settings(["--config", path, "--slots", "2", "--allow-call", "os.path"])
    assert flags.slots == 2 and flags.name == "from-file"
    assert flags.allow_call == ("os.path",)  # the flag replaces the file's list
    defaults = worker_settings(["--name", "plain"])
    assert defaults.slots == 4 and defaults.coordinators == ("127.0.0.1:7999",)


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    """A misspelt key is refused in one line that names it."""
    path = write(tmp_path, "heartbeat_intervall = 0.5\n")
    with pytest.raises(ConfigError, match="unknown key 'heartbeat_intervall'") as caught:
        coordinator_settings(["--config", path])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "key"), [
    ('slots = "many"\n', "slots"),
    ("slots = 0\n", "slots"),
    ("slots = true\n", "slots"),
    ("no_shell = 1\n", "no_shell"),
    ('log_level = "loud"\n', "log_level"),
    ("name = 3\n", "name"),
    ("[slots]\nx = 1\n", "slots"),
])
def test_type_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type or out of range names its key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=key):
        worker_settings(["--config", path])


def test_unreadable_or_invalid_files_say_so(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are one-line errors naming the file."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        worker_settings(["--config", os.path.join(tmp_path, "missing.toml")])
    with pytest.raises(ConfigError, match="not valid TOML"):
        worker_settings(["--config", write(tmp_path, "slots = \n")])


def module_level(x: int) -> int:
    return x


class Holder:
    @classmethod
    def build(cls) -> str:
        return "built"

    def method(self) -> None:
        return None


def test_function_objects_become_module_colon_qualname() -> None:
    """A module-level function, a builtin and a classmethod name themselves; strings pass."""
    assert function_name(module_level) == f"{__name__}:module_level"
    assert function_name(math.sqrt) == "math:sqrt"
    assert function_name(Holder.build) == f"{__name__}:Holder.build"
    assert function_name("mypkg.tasks:resize") == "mypkg.tasks:resize"


def test_functions_a_worker_cannot_import_are_refused_with_a_reason() -> None:
    """Lambdas, functions inside functions, bound methods and __main__ functions are refused
    with a message saying why."""
    def local() -> None:
        return None

    with pytest.raises(RequestError, match="lambda"):
        function_name(lambda: None)
    with pytest.raises(RequestError, match="inside another function"):
        function_name(local)
    with pytest.raises(RequestError, match="bound to an object"):
        function_name(Holder().method)
    local.__module__ = "__main__"
    local.__qualname__ = "local"
    with pytest.raises(RequestError, match="__main__"):
        function_name(local)
