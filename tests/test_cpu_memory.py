"""``cpu_keep_freed_memory``: a PPO trainer on a CPU makes the process reuse freed memory, so that a buffer
allocated again costs no page faults. Each case runs in a fresh process, as the setting is process-wide."""

import json
import subprocess
import sys
import textwrap

import pytest

from icegrt_trl.ppo import cpu_memory

# Build a small PPO trainer (the option as given), then allocate and free a [49152, 576] fp32 buffer (113 MB: the
# embedding gradient of a 49k vocabulary) seven times and count the kernel's minor page faults of each of the last
# four.
SCRIPT = textwrap.dedent("""
    import json, resource, sys, tempfile
    import torch
    from icegrt_trl import PPOConfig, PPOTrainer
    from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

    keep = sys.argv[1] == "on"
    tok = build_tokenizer()
    prompts = make_datasets(num_sft=4, num_preferences=4, num_pmp=4, num_pref_eval=4, num_unlabeled=8,
                            num_eval=2)["unlabeled"]
    args = PPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                     response_length=4, save_strategy="no", num_sample_generations=0, max_steps=1,
                     cpu_keep_freed_memory=keep)
    small = dict(hidden_size=32, num_layers=1, num_heads=2)
    t = PPOTrainer(args=args, processing_class=tok, model=tiny_causal_lm("llama", tok, **small),
                   reward_model=gold_reward, train_dataset=prompts)

    def allocate():
        x = torch.zeros(49152, 576)
        x[::97] = 1.0
        del x

    allocate(), allocate(), allocate()
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        allocate()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print("RESULT " + json.dumps({"keeps": t.keeps_freed_memory, "faults": faults}))
""")


def run(option: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, option], capture_output=True, text=True, check=True).stdout
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])


@pytest.mark.skipif(cpu_memory.glibc() is None, reason="the option acts on glibc's allocator only")
def test_trainer_on_cpu_makes_reallocated_buffers_fault_free():
    on, off = run("on"), run("off")
    pages = 49152 * 576 * 4 // 4096  # 27,648 pages of 4 KiB per buffer
    assert on["keeps"] is True and off["keeps"] is False
    # off: every allocation is a fresh mmap, zero-filled page by page by the kernel
    assert all(f > 0.9 * pages for f in off["faults"]), off
    # on: the freed block is reused, nothing comes back from the kernel. glibc now and then serves one of the
    # allocations from fresh pages (seen once in CI: one buffer's worth in one of four), so three of four must be free
    assert sorted(on["faults"])[2] < 0.02 * pages, on


def test_other_c_libraries_are_left_alone(monkeypatch, caplog):
    monkeypatch.setattr(cpu_memory, "_applied", False)
    monkeypatch.setattr(cpu_memory.platform, "libc_ver", lambda: ("musl", ""))
    with caplog.at_level("INFO", logger=cpu_memory.__name__):
        assert cpu_memory.keep_freed_memory_in_process() is False
    assert "not a glibc process (musl)" in caplog.text
