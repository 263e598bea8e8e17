"""Two processes (torch.distributed on the CPU, gloo — what `accelerate launch` starts): the replicas stay identical
(with the ptx loss), the plugins' statistics (KL coefficient, reward moments) are all-reduced so every process holds
the same state, and resuming from a mid-rollout checkpoint gives the uninterrupted run on every rank."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ppo_two_processes.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_process_run_keeps_replicas_and_plugin_state_in_sync(tmp_path, precision):
    out = tmp_path / "state.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(SCRIPT), str(out)] + (["bf16"] if precision == "bf16" else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = json.loads(out.read_text()), json.loads(Path(str(out) + ".rank1").read_text())
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["checksum"] == rank1["checksum"]  # gradients averaged across processes, ptx loss included
    assert rank0["checksum"] != rank0["start"]  # and the weights did move
    assert rank0["ptx_rows"] and rank0["ptx_rows"] != rank1["ptx_rows"]  # each process reads its own ptx rows
    assert rank0["kl_coef"] == rank1["kl_coef"] != 0.05  # adaptive controller moved, on the all-process KL
    assert rank0["reward_moments"] == rank1["reward_moments"]
    assert rank0["reward_moments"]["count"] == 2 * 16 * 2  # 2 rollouts × 16 sequences × 2 processes
    assert rank0["log"][-1]["objective/kl"] == rank1["log"][-1]["objective/kl"]
    # on a CPU under bf16 every process runs the padding-free forwards (cpu_bf16_padding_free, a default)
    assert rank0["attention"] == rank1["attention"] == ("icegrt_padding_free_eager" if precision == "bf16" else "sdpa")


RESUME_SCRIPT = Path(__file__).parent / "scripts" / "ppo_two_processes_resume.py"


@pytest.mark.parametrize("mini_batches", [2, 1])  # 1: the rollout reuses the first training forward
def test_two_process_resume_from_a_mid_rollout_checkpoint_equals_the_uninterrupted_run(tmp_path, mini_batches):
    """Each process saves and restores its own half-used rollout (and RNG state): before, rank 1 resumed on rank 0's
    rollout and the two runs diverged."""
    out = tmp_path / "resume"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(RESUME_SCRIPT), str(out), str(mini_batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["buffer_first_query"] != ranks[1]["buffer_first_query"]  # each rank keeps its own rollout
    for r in ranks:
        assert r["world"] == 2
        assert r["full"] != r["start"]  # training moved the weights
        assert r["resumed"] == pytest.approx(r["full"], rel=1e-6)
        assert r["rollouts_done"][0] == r["rollouts_done"][1] == 8 // (2 * mini_batches)  # 8 steps, 2 epochs
        for step in range(4, 9):
            for key, value in r["full_steps"][str(step)].items():
                assert r["resumed_steps"][str(step)][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
    assert ranks[0]["full"] == ranks[1]["full"]  # replicas stay identical
