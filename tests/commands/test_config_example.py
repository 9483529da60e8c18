"""`opik-cipx config --example`: generated from the option table, valid, and README's copy matches."""

import re
import tomllib

from opik_cipx.config import OPTIONS, example_toml, load_settings
from tests.conftest import REPO, run_command


def uncommented(text: str) -> str:
    """The example with every `# key = value` line switched on (section headers are already on)."""
    return re.sub(r"^# (\w+ = .*)$", r"\1", text, flags=re.MULTILINE)


def test_every_option_appears_once_with_its_help_and_environment_variable():
    text = example_toml()
    for opt in OPTIONS:
        section, _, name = opt.key.rpartition(".")
        assert f"# {opt.help}" in text, opt.key
        if opt.env:
            assert f"(env {opt.env})" in text, opt.key
        if section:
            assert f"\n[{section}]\n" in text
    assert text.count("\n[opik]\n") == 1


def test_switched_on_it_is_a_config_file_that_gives_the_defaults(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(uncommented(example_toml()))
    table = tomllib.loads(config.read_text())
    assert table["opik"]["base_url"] == "" and table["captures"]["max_mb"] == 512
    loaded = load_settings({"CIPX_HOME": str(tmp_path), "CIPX_CONFIG": str(config)})
    defaults = load_settings({"CIPX_HOME": str(tmp_path), "CIPX_CONFIG": str(tmp_path / "none.toml")})
    assert loaded.warnings == () and loaded.values == defaults.values


def test_readme_carries_the_generated_example():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"```toml\n(# opik-cipx settings:.*?)```", readme, flags=re.DOTALL)
    assert match, "README has no config.toml example block"
    assert match.group(1) == example_toml(), "README's config.toml example is stale: paste `opik-cipx config --example`"


def test_the_command_prints_it_even_with_a_broken_config_file(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text("tee_queue_max = = 1\n")
    result = run_command(home, "config", "--example")
    assert result.returncode == 0 and result.stdout == example_toml() and result.stderr == ""
    bare = run_command(home, "config")
    assert bare.returncode == 2 and "--example" in bare.stderr
