"""Small levers on the bf16 CPU update of SmolLM2-135M-Instruct that were measured and not kept (docs/benchmarks.md).

    python benchmarks/cpu_bf16_levers.py decode [--rounds 5]   # sampling 8 rows x 24 tokens: KV cache x attention
    python benchmarks/cpu_bf16_levers.py rmsnorm                # transformers' RMSNorm against F.rms_norm, fwd + bwd

decode: the rollout's sampling (our generate_rollouts: PPOConfig's warpers, inverse-CDF draw) under bf16 autocast,
with transformers' DynamicCache (concatenates every layer's keys and values at each step) or a cache that writes into
buffers reserved for the whole response, and with SDPA (what the trainer samples with) or our grouped eager attention.
Alternating, same seeds; the reserved cache must give the same tokens.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from icegrt_trl.ppo.cpu_memory import keep_freed_memory_in_process


def decode(rounds: int) -> None:
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.cache_utils import DynamicLayer

    from icegrt_trl.ppo.generation import (generate_rollouts, isolated_generation, rollout_generation_config,
                                           sampling_processors)
    from icegrt_trl.ppo.grouped_attention import eager_implementation_for
    from icegrt_trl.testbed.smollm2 import smollm2_path

    class ReservedLayer(DynamicLayer):
        """Keys and values written into buffers with room for ``reserve`` more positions (no per-step cat)."""

        reserve = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.filled, self.key_buffer, self.value_buffer = 0, None, None
            n, add = self.filled, key_states.shape[-2]
            if self.key_buffer is None or n + add > self.key_buffer.shape[-2]:
                shape = (*key_states.shape[:-2], n + add + self.reserve, key_states.shape[-1])
                kb, vb = key_states.new_empty(shape), value_states.new_empty(shape)
                if n:
                    kb[..., :n, :].copy_(self.keys)
                    vb[..., :n, :].copy_(self.values)
                self.key_buffer, self.value_buffer = kb, vb
            self.key_buffer[..., n:n + add, :].copy_(key_states)
            self.value_buffer[..., n:n + add, :].copy_(value_states)
            self.filled = n + add
            self.keys, self.values = self.key_buffer[..., :self.filled, :], self.value_buffer[..., :self.filled, :]
            return self.keys, self.values

    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="sdpa").eval()
    rows, new = 8, 24
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 49152, (rows, 60), generator=g)
    mask = torch.ones_like(ids)
    for i in range(rows):
        mask[i, :3 * i] = 0
    gen = rollout_generation_config(max_new_tokens=new, do_sample=True, temperature=0.7, pad_token_id=2)
    greedy = copy.deepcopy(gen)
    greedy.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=None)

    def run(cache: str, seed: int = 0) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            if cache == "dynamic":
                return generate_rollouts(model, ids, mask, gen)
            ReservedLayer.reserve = new
            kv = DynamicCache()
            kv.layer_class_to_replicate = ReservedLayer
            with isolated_generation(model):
                return model.generate(input_ids=ids, attention_mask=mask, generation_config=greedy,
                                      past_key_values=kv, logits_processor=sampling_processors(gen))

    variants = [(a, c) for a in ("sdpa", eager_implementation_for(model.config)) for c in ("dynamic", "reserved")]
    times = {v: [] for v in variants}
    for attn, cache in variants:
        model.set_attn_implementation(attn)
        run(cache)
        if cache == "reserved":
            assert torch.equal(run("reserved", 1), run("dynamic", 1)), "the reserved cache changed the samples"
    for _ in range(rounds):
        for attn, cache in variants:
            model.set_attn_implementation(attn)
            t0 = time.perf_counter()
            run(cache)
            times[(attn, cache)].append(time.perf_counter() - t0)
    print(f"sampling {rows} rows x {new} tokens after 60 prompt columns, bf16 autocast, s per call:")
    for (attn, cache), ts in times.items():
        print(f"  {attn:22s} {cache:9s} median {statistics.median(ts):.3f}  ({', '.join(f'{t:.2f}' for t in ts)})")


def rmsnorm() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5)
    x0 = torch.randn(8, 63, 576)

    def ours():
        x = x0.clone().requires_grad_()
        y = norm(x)
        y.backward(torch.ones_like(y))
        return y

    def fused():
        x = x0.clone().requires_grad_()
        y = torch.nn.functional.rms_norm(x, (576,), norm.weight, 1e-5)
        y.backward(torch.ones_like(y))
        return y

    print("max |difference|:", (ours() - fused()).abs().max().item())
    times = {"transformers LlamaRMSNorm": [], "torch F.rms_norm": []}
    for _ in range(3):
        for name, fn in zip(times, (ours, fused)):
            for _ in range(5):
                fn()
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            times[name].append((time.perf_counter() - t0) / 50 * 1e3)
    print("[8, 63, 576] fp32, forward + backward, ms per call:")
    for name, ts in times.items():
        print(f"  {name}: {', '.join(f'{t:.2f}' for t in ts)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["decode", "rmsnorm"])
    p.add_argument("--rounds", type=int, default=5, help="decode: alternations of the four variants")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_process()
    decode(args.rounds) if args.what == "decode" else rmsnorm()


if __name__ == "__main__":
    main()
