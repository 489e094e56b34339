"""CLI conventions: the five groups, stubs exit non-zero with their message, --json parses, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_help_lists_the_groups(cli):
    code, out, _ = cli(["--help"])
    assert code == 0
    for group in ("prepare", "pretrain", "probe", "analyze", "demo"):
        assert group in out


def test_every_command_has_help_with_an_example():
    from typer.main import get_command

    from sslcli.cli import app

    root = get_command(app)
    commands = []
    for name, cmd in root.commands.items():
        sub = getattr(cmd, "commands", None)
        commands += [(f"{name} {s}", c) for s, c in sub.items()] if sub else [(name, cmd)]
    assert len(commands) >= 15
    for name, cmd in commands:
        assert "Example: sslcli" in (cmd.help or ""), f"`sslcli {name} --help` has no worked example"
        options = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--json", "--quiet", "--debug"} <= options, name


def test_version_flag(cli):
    from sslcli import __version__

    code, out, _ = cli(["--version"])
    assert code == 0 and out.strip() == __version__


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "sslcli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip()


def test_unknown_option_is_a_usage_error(cli):
    code, _, _ = cli(["pretrain", "--no-such-flag"])
    assert code == 2


@pytest.fixture
def good_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    (tmp_path / "data").mkdir()  # --dry-run checks that the data root exists
    path.write_text(f"data: {{root: {tmp_path / 'data'}}}\nmethod: {{name: moco, queue_size: 512}}\nbatch_size: 64\n")
    return path


def test_dry_run_json_parses(cli, good_spec):
    code, out, _ = cli(["pretrain", good_spec, "--dry-run", "--json"])
    assert code == 0
    result = json.loads(out)
    assert result["valid"] is True and result["spec"]["method"]["queue_size"] == 512
    assert result["lr"] == pytest.approx(0.3 * 64 / 256)


def test_bad_spec_lists_every_error_with_its_path_and_exits_2(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {root: d, colour: red}\nmethod: {name: moco, queue_size: 100}\nbatch_size: 96\n"
                    "precision: fp8\n")
    code, _, err = cli(["pretrain", path, "--dry-run"])
    assert code == 2
    assert "data.colour: unknown key" in err
    assert "precision: 'fp8' is not allowed" in err
    assert "Traceback" not in err


def test_cross_field_error_names_the_field(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {root: d}\nmethod: {name: moco, queue_size: 100}\nbatch_size: 96\n")
    code, _, err = cli(["pretrain", path, "--dry-run"])
    assert code == 2
    assert "method.queue_size: must be divisible by the global batch size 96" in err


def test_missing_spec_file_is_one_line_exit_2(cli, tmp_path):
    code, _, err = cli(["pretrain", tmp_path / "nope.yaml", "--dry-run"])
    assert code == 2
    assert err.strip().count("\n") == 0 and "nope.yaml" in err


def test_set_override_applies_before_validation(cli, good_spec):
    code, out, _ = cli(["pretrain", good_spec, "--dry-run", "--json", "--set", "epochs=3", "--set",
                        "method.knn.enabled=true"])
    assert code == 0
    spec = json.loads(out)["spec"]
    assert spec["epochs"] == 3 and spec["method"]["knn"]["enabled"] is True


def test_schema_is_json(cli):
    code, out, _ = cli(["pretrain", "--schema"])
    assert code == 0
    schema = json.loads(out)
    assert "method" in schema["properties"]


def test_cli_start_up_does_not_import_torch():
    # Every `sslcli` call (and --help) pays for what the CLI modules import at start-up: torch costs seconds.
    code = "import sys, sslcli.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_errors_from_dataloader_workers_are_one_line(capsys):
    import typer
    from torch.utils.data import DataLoader, Dataset

    from sslcli.cli.common import Output, run_guarded
    from sslcli.errors import InputError

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise InputError("store.h5: image 7 is not in the store")

    with pytest.raises(typer.Exit) as info:
        run_guarded(lambda: list(DataLoader(Broken(), num_workers=1)), Output())
    assert info.value.exit_code == 2
    assert capsys.readouterr().err == "error: store.h5: image 7 is not in the store\n"
