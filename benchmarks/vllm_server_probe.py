"""What a vLLM server's rollout costs on this machine, piece by piece (issue 13; docs/benchmarks.md).

Starts `icegrt-trl vllm-serve testbed:smollm2` and times, for 8 chat prompts × 24 sampled tokens: the base model
(first request = warm-up), writing a LoRA adapter (r=16, all seven projections, as the benchmark's LoRA rows),
loading it into the server, sampling with it; then the CPU time the server's processes use in the seconds after a
request (its engine keeps polling).

    python benchmarks/vllm_server_probe.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from icegrt_trl.vllm_serve import VLLMServerProcess  # noqa: E402

QUESTIONS = ["What is 2 plus 3?", "Name a color.", "Count to three.", "Say hello.", "What is 6 times 2?",
             "What is 9 minus 1?", "What is 7 minus 4?", "What is 10 plus 5?"]


def main() -> None:
    import psutil
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icegrt_trl.ppo.vllm_client import VLLMServerClient
    from icegrt_trl.testbed.smollm2 import smollm2_path

    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for q in QUESTIONS]
    server = VLLMServerProcess("testbed:smollm2", max_lora_rank=16,
                               log_path=Path(tempfile.gettempdir()) / "icegrt_vllm_probe_server.log")
    client = VLLMServerClient(server.url)
    model = client.served_model()

    def sample(name):
        t0 = time.perf_counter()
        client.sample(name, prompts, n=1, max_tokens=24, temperature=0.7, top_p=1.0, top_k=0, stop_token_ids=[2],
                      vocab_size=len(tok), seed=1)
        return time.perf_counter() - t0

    try:
        print(f"base model, first request (warm-up): {sample(model):.2f} s")
        print("base model: " + ", ".join(f"{sample(model):.2f}" for _ in range(3)) + " s")
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(
            r=16, lora_alpha=32, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        root = Path(tempfile.mkdtemp())
        for i in range(3):
            t0 = time.perf_counter()
            lora.save_pretrained(root / str(i))
            t1 = time.perf_counter()
            client.load_adapter(f"probe{i}", str(root / str(i)))
            t2 = time.perf_counter()
            first, second = sample(f"probe{i}"), sample(f"probe{i}")
            if i:
                client.unload_adapter(f"probe{i - 1}")
            print(f"adapter {i}: write {t1 - t0:.2f} s, load {t2 - t1:.2f} s, sample {first:.2f} s then {second:.2f} s")
        shutil.rmtree(root, ignore_errors=True)
        root_proc = psutil.Process(server.proc.pid)
        procs = [root_proc] + root_proc.children(recursive=True)

        def cpu_seconds():
            return sum(sum(p.cpu_times()[:2]) for p in procs)

        sample(model)
        c0 = cpu_seconds()
        time.sleep(2.0)
        c1 = cpu_seconds()
        time.sleep(3.0)
        c2 = cpu_seconds()
        print(f"server CPU time after a request: {c1 - c0:.2f} s in the first 2 s, {c2 - c1:.2f} s in the next 3 s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
