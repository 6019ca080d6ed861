"""Policy ``fine``: every step at size 1, by name wherever a policy is taken (parse_policy, generate --policy,
the service's ``policy`` field, a calibrated profile's spec)."""
import json

from click.testing import CliRunner

from ddit_export.cli import main
from ddit_export.settings import ScheduleSettings, parse_policy, policy_spec


def test_parse_policy_fine_round_trips():
    s = parse_policy("fine", ScheduleSettings(policy="ladder", n4=10, tail=9))
    assert s.policy == "fine" and policy_spec(s) == "fine" and parse_policy(policy_spec(s)).policy == "fine"


def test_fine_policy_ignores_ladder_knobs_of_the_profile():
    from ddit_export.schedule import make_policy
    from ddit_export.settings import GenerateSettings

    # a profile's ladder knobs (head + n4 + tail > steps) do not bind the fine policy
    s = GenerateSettings(prompts=("a",), steps=5, schedule=ScheduleSettings(policy="fine", n4=10, tail=9))
    p = make_policy(s, (8, 8), (1, 2, 4))
    assert [p.decide(i, []).size for i in range(5)] == [1] * 5


def test_generate_policy_fine_runs_every_step_fine(tmp_path):
    trace = tmp_path / "t.json"
    r = CliRunner().invoke(main, ["generate", "--model", "tiny", "--steps", "6", "--policy", "fine", "--out",
                                  str(tmp_path / "a.png"), "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    assert [s["size"] for s in json.loads(trace.read_text())["steps"]] == [1] * 6
    assert "policy fine" in r.output and "coarse steps 0%" in r.output
