"""`relayx campaigns` and `relayx dnc` against a real backend (SQLite, the simulated line): a CSV with
bad rows is refused row by row, a good one runs to the end behind a progress bar."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.main import create_app
from relayx_cli.campaigns import parse_window, progress_line
from relayx_cli.main import app
from tests.conftest import make_settings
from tests.support.servers import free_port, serve


def test_windows_are_written_as_days_and_hours() -> None:
    assert parse_window("Mon-Fri 09:00-17:00") == {
        "days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
    assert parse_window("sat, mon-tue 10:00 - 12:30")["days"] == ["sat", "mon", "tue"]
    for bad in ("weekdays 9-5", "fri-mon 09:00-17:00", "mon 9:00-17:00"):
        with pytest.raises(ValueError):
            parse_window(bad)
    line = progress_line({"status": "running", "progress": {
        "total": 4, "completed": 1, "failed": 1, "calling": 1, "pending": 1, "calls_placed": 3}})
    assert line.startswith("[" + "#" * 15 + "-" * 15 + "] 2/4 running")


def test_the_cli_refuses_bad_rows_and_follows_a_campaign_to_its_end(tmp_path: Path) -> None:
    port = free_port()
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/relayx.db", "RELAYX_DATA_DIR": str(tmp_path),
           "RELAYX_API_KEY": "test-key", "TELEPHONY_PROVIDER": "simulator",
           "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "CAMPAIGN_TICK_S": "1"}
    settings = make_settings(tmp_path, **env)
    runner = CliRunner()
    bad = tmp_path / "bad.csv"
    bad.write_text("phone_number,first_name\n+14155550101,Ann\nnot-a-number,Bo\n")
    good = tmp_path / "reminders.csv"
    good.write_text("phone_number,first_name,simulate\n+14155550101,Ann,busy\n+14155550102,Bo,no-answer\n"
                    "+14155550103,Cy,busy\n")
    with serve(create_app(settings), port):
        made = runner.invoke(app, ["agents", "create", "--name", "Ava", "--prompt", "Remind {first_name}."], env=env)
        assert made.exit_code == 0, made.output
        refused = runner.invoke(app, ["campaigns", "create", "--csv", str(bad), "--agent", "Ava"], env=env)
        assert refused.exit_code == 1
        assert "row 3, phone_number: phone_number must be an E.164 number" in refused.output
        listed = runner.invoke(app, ["dnc", "add", "+14155550103"], env=env)
        assert listed.exit_code == 0 and "1 added" in listed.output
        ran = runner.invoke(app, ["campaigns", "create", "--csv", str(good), "--agent", "Ava", "--max-attempts", "2",
                                  "--retry-delay", "0", "--follow"], env=env)
        assert ran.exit_code == 0, ran.output
        assert "3 contacts, running" in ran.output
        assert ran.output.rstrip().endswith(
            "3/3 completed: calling 0 pending 0 completed 0 failed 2 skipped 1, 4 calls placed")
        campaign_id = ran.output.split()[1]
        shown = runner.invoke(app, ["campaigns", "show", campaign_id, "--no-follow", "--contacts"], env=env)
        assert shown.exit_code == 0, shown.output
        assert "+14155550101     failed     attempts 2  busy" in shown.output
        assert "+14155550103     skipped    attempts 0  do_not_call" in shown.output
