"""The node agent's ``kubeadm join`` step and token removal, word for word (issue 18,
round 5: the survivors of ``Agent.join`` and ``Agent.forget_token``).

Commands are answered by test_agent.py's FakeSystem (extended here to record each call's
timeout); the log lines are the agent's stderr protocol (``nodeforge-enroll: step=...``),
the limits literals from the agent's contract (kubeadm join 900 s, reset 300 s, three
attempts, the last 300 characters of kubeadm's output).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent import FakeHttp, FakeSystem, agent, enrollment, make_cfg
from test_agent_exact import ca  # noqa: F401 (fixture)


class JoinSystem(FakeSystem):
    def __init__(self, outputs: list[tuple[int, str]] | None = None, remove=False) -> None:
        super().__init__()
        self.outputs = list(outputs or [])
        self.timeouts: list[tuple[str, object]] = []
        self.remove = remove  # kubeadm removes its config itself

    def run(self, argv, timeout=600, env=None):
        self.timeouts.append((argv[1], timeout))
        if argv[1] == "join" and self.outputs:
            rc, out = self.outputs.pop(0)
            self.calls.append(list(argv))
            self.join_configs.append(Path(argv[3]).read_text())
            if self.remove:
                Path(argv[3]).unlink()
            return rc, out
        if argv[1] == "join" and self.remove:
            rc_out = super().run(argv, timeout, env)
            Path(argv[3]).unlink()
            return rc_out
        return super().run(argv, timeout, env)


def make(tmp_path, ca, system, **over):  # noqa: F811
    cfg = make_cfg(tmp_path, ca, **over)
    sleeps: list[float] = []
    a = agent.Agent(
        cfg,
        system,
        FakeHttp([]),
        clock=lambda: 1_800_000_000.0,
        sleep=sleeps.append,
        rand=lambda: 1.0,
    )
    return a, sleeps


def test_join_runs_kubeadm_with_its_config_and_removes_it(tmp_path, ca, capsys):  # noqa: F811
    s = JoinSystem()
    a, sleeps = make(tmp_path, ca, s)
    a.join(enrollment())
    path = tmp_path / "run" / "join.yaml"
    assert s.calls == [["kubeadm", "join", "--config", str(path)]]
    assert s.timeouts == [("join", 900)]
    assert len(s.join_configs) == 1 and "abcdef.0000000000000001" in s.join_configs[0]
    assert not path.exists()  # it held a bootstrap token
    assert sleeps == []
    assert capsys.readouterr().err.splitlines() == [
        f"nodeforge-enroll: step=join config={path} node_ip=10.100.0.7 running kubeadm join",
        "nodeforge-enroll: step=join kubeadm join succeeded",
    ]


def test_a_config_kubeadm_removed_itself_is_fine(tmp_path, ca):  # noqa: F811
    s = JoinSystem(remove=True)
    a, _ = make(tmp_path, ca, s)
    a.join(enrollment())
    assert not (tmp_path / "run" / "join.yaml").exists()


def test_a_failed_join_resets_then_tries_with_fresh_material(tmp_path, ca, capsys):  # noqa: F811
    out = "A" * 100 + "B" * 300 + "\n"
    s = JoinSystem([(1, out), (0, "")])
    a, sleeps = make(tmp_path, ca, s)
    a.join(enrollment())
    path = tmp_path / "run" / "join.yaml"
    assert s.calls == [
        ["kubeadm", "join", "--config", str(path)],
        ["kubeadm", "reset", "-f"],
        ["kubeadm", "join", "--config", str(path)],
    ]
    assert s.timeouts == [("join", 900), ("reset", 300), ("join", 900)]
    assert sleeps == [2.0]  # backoff(0) with rand() = 1
    assert "abcdef.0000000000000002" in s.join_configs[1]  # fetched again after the reset
    assert capsys.readouterr().err.splitlines() == [
        f"nodeforge-enroll: step=join config={path} node_ip=10.100.0.7 running kubeadm join",
        "nodeforge-enroll: step=join attempt=1 kubeadm join failed (exit 1): " + "B" * 300,
        "nodeforge-enroll: step=join waiting 2.0s: fresh join material after reset",
        f"nodeforge-enroll: step=join config={path} node_ip=10.100.0.7 running kubeadm join",
        "nodeforge-enroll: step=join kubeadm join succeeded",
    ]


def test_join_gives_up_after_its_attempts(tmp_path, ca, capsys):  # noqa: F811
    s = JoinSystem([(2, "no"), (2, "no"), (2, "no")])
    a, sleeps = make(tmp_path, ca, s)
    with pytest.raises(agent.Retry) as e:
        a.join(enrollment())
    assert str(e.value) == "kubeadm join failed 3 times"
    assert sleeps == [2.0, 4.0, 8.0]
    lines = capsys.readouterr().err.splitlines()
    assert [ln for ln in lines if "failed" in ln] == [
        f"nodeforge-enroll: step=join attempt={i} kubeadm join failed (exit 2): no"
        for i in (1, 2, 3)
    ]


def test_a_used_token_is_removed_and_said(tmp_path, ca, capsys):  # noqa: F811
    a, _ = make(tmp_path, ca, FakeSystem())
    token = tmp_path / "token"
    assert token.exists()
    a.forget_token()
    assert not token.exists()
    assert capsys.readouterr().err.splitlines() == [
        f"nodeforge-enroll: step=enroll path={token} removed the used enrollment token"
    ]
    a.forget_token()  # already gone: nothing to say
    assert capsys.readouterr().err == ""
