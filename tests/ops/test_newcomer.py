"""What a new user met on the gateway: ``validate-config FILE`` where every other command takes ``--config FILE``."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edge_agent.cli import main
from tests.agent.pipeline_helpers import agent_config

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "ims-test2"


def test_validate_config_takes_config_as_the_other_commands_do_and_file_as_before(tmp_path):
    cfg = agent_config(tmp_path, BUNDLE)
    for argv in (["--config", str(cfg)], [str(cfg)], [str(cfg), "--config", str(cfg)]):
        result = CliRunner().invoke(main, ["validate-config", *argv])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{cfg}: ok (gateway ") and "pump-7: source serial" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("k = 3", "k = 9"))
    for argv in (["--config", str(bad)], [str(bad)]):
        result = CliRunner().invoke(main, ["validate-config", *argv])
        assert result.exit_code == 1 and "alerts.k: must be 1..n" in result.output
    both = CliRunner().invoke(main, ["validate-config", str(cfg), "--config", str(bad)])
    assert both.exit_code == 2 and "two configs given" in both.output
    neither = CliRunner().invoke(main, ["validate-config"])
    assert neither.exit_code == 2 and "validate-config --config FILE" in neither.output
    usage = CliRunner().invoke(main, ["validate-config", "--help"])
    assert "--config" in usage.output and "[FILE]" in usage.output
