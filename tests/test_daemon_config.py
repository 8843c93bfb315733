"""Configuration: TOML file + flags, strict validation, the loopback-only default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostscope.daemon.config import Config, ConfigError, build_config, is_loopback, known_keys


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostscope.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    config = build_config()
    assert config == Config()
    assert config.host == "127.0.0.1" and config.port == 7470
    assert config.token_file is None and config.tokens == () and config.tls_cert is None
    config.check_bind()


def test_file_values_and_flag_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """
host = "::1"
port = 7471
interval = 2          # an integer is fine for a float setting
history = 600.5
allowed_hosts = ["dash.example"]
allowed_origins = ["https://other.example:8443"]
frame_ancestors = ["https://wiki.example"]
log_format = "json"
proc_root = "/host/proc"
""")
    config = build_config(path, {"port": 9000, "log_level": "debug"})
    assert config.host == "::1"
    assert config.port == 9000  # the flag wins
    assert config.interval == 2.0 and isinstance(config.interval, float)
    assert config.history == 600.5
    assert config.allowed_hosts == ("dash.example",)
    assert config.allowed_origins == ("https://other.example:8443",)
    assert config.frame_ancestors == ("https://wiki.example",)
    assert config.log_format == "json" and config.log_level == "debug"
    assert config.roots().proc == Path("/host/proc")
    assert config.roots().sys == Path("/sys")


def test_every_field_is_a_known_key() -> None:
    assert set(known_keys()) == set(Config.__dataclass_fields__)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ("[server]\nport = 1\n", "unknown key 'server'"),
        ('port = "7470"\n', "'port' must be an integer, got str"),
        ("port = 7470.0\n", "'port' must be an integer, got float"),
        ("port = true\n", "'port' must be an integer, got bool"),
        ("port = 70000\n", "'port' must be >= 0 and <= 65535"),
        ('interval = "1s"\n', "'interval' must be a number, got str"),
        ("interval = 0\n", "'interval' must be >= 0.01"),
        ("interval = nan\n", "'interval' must be a finite number"),
        ("history = 0\n", "'history' must be > 0"),
        ("tcpconn_interval = 0\n", "'tcpconn_interval' must be > 0"),
        ('tcpconn_interval = "5s"\n', "'tcpconn_interval' must be a number, got str"),
        ("bpf = 1\n", "'bpf' must be true or false, got int"),
        ("allow_remote = true\n", "allow_remote was removed"),
        ('tokens = "viewer x"\n', "'tokens' must be a list of non-empty strings"),
        ('allowed_hosts = "a"\n', "'allowed_hosts' must be a list of non-empty strings"),
        ("allowed_hosts = [1]\n", "'allowed_hosts' must be a list of non-empty strings"),
        ('log_level = "verbose"\n', "'log_level' must be one of debug, info, warning, error"),
        ('log_format = "xml"\n', "'log_format' must be one of text, json"),
        ('host = ""\n', "'host' must be a non-empty string"),
        ("interval = 10\nhistory = 5\n", "interval must not be longer than history"),
    ],
)
def test_bad_files_are_rejected_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert message in str(info.value)
    if not message.startswith("interval must"):  # a per-key error names the file
        assert f"config file {path}" in str(info.value)


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(path)
    path.write_bytes(b"host = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        build_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_config(tmp_path / "nope.toml")


def test_bad_flag_values_name_the_command_line() -> None:
    with pytest.raises(ConfigError, match="command line: key 'port'"):
        build_config(None, {"port": -1})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)
    Config(host=host).check_bind()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", ""])
def test_remote_bind_needs_configured_tokens(host: str, tmp_path: Path) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="refusing to listen") as info:
        Config(host=host).check_bind({})
    assert "no tokens are configured" in str(info.value)
    Config(host=host, token_file=str(tmp_path / "tokens")).check_bind({})
    Config(host=host, tokens=("viewer sha256:" + "0" * 64,)).check_bind({})
    Config(host=host).check_bind({"HOSTSCOPE_TOKEN": "x" * 32})


def test_tls_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        Config(tls_cert="/c.pem").check_bind({})
    Config(tls_cert="/c.pem", tls_key="/k.pem").check_bind({})


# -- the browser-facing allowlists: frame_ancestors goes into the CSP header as written --

GOOD_ENTRIES = {
    "frame_ancestors": ["'self'", "https:", "https://wiki.example.com", "*.example.com:443",
                        "https://*.example.com", "wiki.example.com", "http://10.0.0.5:8080",
                        "https://wiki.example.com/runbooks/", "https://x.example:*"],
    "allowed_origins": ["https://dash.example", "http://dash.example:7470",
                        "HTTPS://Dash.Example:8443", "http://10.0.0.5:7470", "http://[::1]:7470"],
    "allowed_hosts": ["myhost", "myhost.example", "myhost.example.", "myhost.example:7470",
                      "10.0.0.5", "10.0.0.5:7470", "[::1]", "[::1]:7470", "fe80::1", "*"],
}


@pytest.mark.parametrize("key", sorted(GOOD_ENTRIES))
def test_allowlist_entries_in_their_forms_are_accepted(tmp_path: Path, key: str) -> None:
    entries = GOOD_ENTRIES[key]
    path = write(tmp_path, f"{key} = {json.dumps(entries)}\n")
    assert getattr(build_config(path), key) == tuple(entries)
    assert build_config(None, {"frame_ancestors": ["'none'"]}).frame_ancestors == ("'none'",)


@pytest.mark.parametrize(("key", "bad"), [
    # Would add CSP directives or sources nobody wrote as such.
    ("frame_ancestors", "https://a.example; script-src *"),
    ("frame_ancestors", "https://a.example https://b.example"),
    ("frame_ancestors", "https://a.example,https://b.example"),
    ("frame_ancestors", "https://a.example\n"),
    ("frame_ancestors", "https://a.example\u0000"),
    ("frame_ancestors", "'unsafe-inline'"),
    ("frame_ancestors", "self"),
    ("frame_ancestors", "https://"),
    ("frame_ancestors", "https://a.example:99999"),
    ("frame_ancestors", "https://wiki.\u00e9xample"),
    ("allowed_origins", "https://dash.example/"),
    ("allowed_origins", "https://dash.example/path"),
    ("allowed_origins", "dash.example"),
    ("allowed_origins", "ftp://dash.example"),
    ("allowed_origins", "https://dash.example:0"),
    ("allowed_origins", "https://dash example"),
    ("allowed_origins", "null"),
    ("allowed_origins", "*"),
    ("allowed_hosts", "http://myhost"),
    ("allowed_hosts", "myhost:port"),
    ("allowed_hosts", "myhost:70000"),
    ("allowed_hosts", "my host"),
    ("allowed_hosts", "myhost/path"),
    ("allowed_hosts", "[::1"),
    ("allowed_hosts", "[nothost]:7470"),
])
def test_bad_allowlist_entries_are_refused_naming_key_and_value(
        tmp_path: Path, key: str, bad: str) -> None:
    path = write(tmp_path, f"{key} = [{json.dumps(GOOD_ENTRIES[key][0])}, {json.dumps(bad)}]\n")
    with pytest.raises(ConfigError) as info:
        build_config(path)
    message = str(info.value)
    assert f"key {key!r}" in message and repr(bad) in message, message
    assert f"config file {path}" in message


def test_none_must_stand_alone_in_frame_ancestors() -> None:
    with pytest.raises(ConfigError, match="'none' must be the only entry"):
        build_config(None, {"frame_ancestors": ["'none'", "https://wiki.example"]})


# -- the profiler's symbol caches ------------------------------------------------------

SYMBOL_CACHE_RANGES = {
    "symbol_cache_elf_files": (16, 100_000),
    "symbol_cache_elf_symbols": (10_000, 100_000_000),
    "symbol_cache_perf_maps": (1, 10_000),
    "symbol_cache_perf_map_symbols": (10_000, 100_000_000),
}


def test_symbol_cache_defaults_are_the_symbolizers_own() -> None:
    from hostscope.bpfmods.symbols import SymbolCacheLimits, Symbolizer

    assert Config().symbol_cache() == SymbolCacheLimits() == Symbolizer().limits
    assert SymbolCacheLimits() == SymbolCacheLimits(
        elf_files=256, elf_symbols=2_000_000, perf_maps=32, perf_map_symbols=2_000_000)


def test_symbol_cache_keys_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "symbol_cache_elf_files = 16\nsymbol_cache_elf_symbols = 10000\n"
                 "symbol_cache_perf_maps = 10000\nsymbol_cache_perf_map_symbols = 100000000\n")
    limits = build_config(path).symbol_cache()
    assert (limits.elf_files, limits.elf_symbols, limits.perf_maps,
            limits.perf_map_symbols) == (16, 10_000, 10_000, 100_000_000)


@pytest.mark.parametrize(("key", "bad", "message"), [
    *[(key, lo - 1, f"must be >= {lo} and <= {hi}, got {lo - 1}")
      for key, (lo, hi) in SYMBOL_CACHE_RANGES.items()],
    *[(key, hi + 1, f"must be >= {lo} and <= {hi}, got {hi + 1}")
      for key, (lo, hi) in SYMBOL_CACHE_RANGES.items()],
    ("symbol_cache_elf_files", 256.0, "must be an integer, got float"),
    ("symbol_cache_elf_symbols", "2M", "must be an integer, got str"),
    ("symbol_cache_perf_maps", True, "must be an integer, got bool"),
    ("symbol_cache_perf_map_symbols", -1, "must be >= 10000"),
])
def test_symbol_cache_limits_are_validated_naming_the_key(
    tmp_path: Path, key: str, bad: object, message: str,
) -> None:
    path = write(tmp_path, f"{key} = {json.dumps(bad)}\n")
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert f"config file {path}: key {key!r} {message}" in str(info.value)


def test_integer_keys_have_integer_bounds_printed_as_written(tmp_path: Path) -> None:
    from hostscope.daemon import config as config_module

    for key, (lo, hi, _) in config_module._RANGES.items():
        if Config.__dataclass_fields__[key].type == "int":
            assert isinstance(lo, int) and isinstance(hi, int), key
    path = write(tmp_path, "max_history_values = 10\n")
    with pytest.raises(ConfigError, match=r"must be >= 1000 and <= 1000000000, got 10$"):
        build_config(path)


def test_collector_cadences_from_the_file_reach_the_sampler(tmp_path: Path) -> None:
    """``tcpconn_interval`` (a host with many connections slows the TCP state walk down)
    and ``process_interval`` set the cadence the daemon's sampler runs them at."""
    from hostscope.daemon.app import create_app
    from hostscope.daemon.keys import SAMPLER

    path = write(tmp_path, "tcpconn_interval = 30\nprocess_interval = 4\nbpf = false\n")
    config = build_config(path)
    assert config.tcpconn_interval == 30.0
    app = create_app(config)
    sampler = app[SAMPLER]
    try:
        assert sampler.group_interval_s("tcpconn") == 30.0
        assert sampler.group_interval_s("process") == 4.0
        assert build_config().tcpconn_interval == 5.0  # the default
    finally:
        sampler.close()
