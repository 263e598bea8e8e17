"""Small levers on the bf16 CPU update of SmolLM2-135M-Instruct that were measured and not kept (docs/benchmarks.md).

    python benchmarks/cpu_bf16_levers.py decode [--rounds 5]   # sampling 8 rows x 24 tokens: KV cache x attention
    python benchmarks/cpu_bf16_levers.py rmsnorm                # transformers' RMSNorm against F.rms_norm, fwd + bwd
    python benchmarks/cpu_bf16_levers.py clip [--rounds 8]      # clipping, then AdamW / clipping inside fused AdamW
    python benchmarks/cpu_bf16_levers.py embedding [--rounds 8] # prefix and rest: two embedding calls / one
    python benchmarks/cpu_bf16_levers.py prefill [--rounds 8]   # generation's prefill: every row / prefix once
    python benchmarks/cpu_bf16_levers.py tied-head [--rounds 8] # frozen reference: tied fp32 head / a bf16 copy

decode: the rollout's sampling (our generate_rollouts: PPOConfig's warpers, inverse-CDF draw) under bf16 autocast,
with transformers' DynamicCache (concatenates every layer's keys and values at each step) or a cache that writes into
buffers reserved for the whole response, and with SDPA (what the trainer samples with) or our grouped eager attention.
Alternating, same seeds; the reserved cache must give the same tokens.

clip, embedding, prefill, tied-head: the four levers issue 12 lists last, each against what the trainer does, on
SmolLM2-135M-Instruct's shapes (8 rows, a 24-token shared prefix, 63 columns after it, 25 LM-head positions),
alternating, medians in ms; each checks first that both variants compute the same thing.
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


def _alternate(variants: dict, rounds: int, setup=None) -> dict:
    """Median ms of each variant's call, alternating; ``setup`` (untimed) runs before every call."""
    times = {name: [] for name in variants}
    for _ in range(2):
        for fn in variants.values():
            setup and setup()
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            setup and setup()
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    for name, ts in times.items():
        print(f"  {name}: median {statistics.median(ts):.1f} ms  ({', '.join(f'{t:.0f}' for t in ts)})")
    return times


def _smollm2(**kwargs):
    from transformers import AutoModelForCausalLM

    from icegrt_trl.testbed.smollm2 import smollm2_path

    return AutoModelForCausalLM.from_pretrained(smollm2_path(), **kwargs)


def clip(rounds: int) -> None:
    """The trainer's optimizer step: ``clip_grad_norm_`` (a norm pass, then every gradient scaled in place), then
    fused AdamW; against the norm alone, the scale handed to fused AdamW as its ``grad_scale`` (it divides each
    gradient as it reads it). Policy + value model: 2 × 135M parameters."""
    policy = _smollm2()
    params = [p for m in (policy, copy.deepcopy(policy.model)) for p in m.parameters()]
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in params]  # total norm ~16: clipping acts
    start = [p.detach().clone() for p in params]
    opts = {name: torch.optim.AdamW(params, lr=1e-5, fused=True) for name in ("clip, then AdamW", "inside AdamW")}

    def restore():
        for p, g0 in zip(params, grads):
            p.grad = g0.clone()

    def separate():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opts["clip, then AdamW"].step()

    def fused():
        opt = opts["inside AdamW"]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        opt.grad_scale = ((norm + 1e-6) / 1.0).clamp(min=1.0)  # 1 / clip_grad_norm_'s coefficient
        opt.step()
        del opt.grad_scale

    results = []
    for fn in (separate, fused):
        with torch.no_grad():
            for p, s0 in zip(params, start):
                p.copy_(s0)
        restore()
        fn()
        results.append([p.detach().clone() for p in params])
    worst = max((a - b).abs().max().item() for a, b in zip(*results))
    print(f"2 x 135M parameters; max |difference| of the updated weights: {worst:.2e}")
    _alternate({"clip, then AdamW": separate, "inside AdamW": fused}, rounds, restore)


def embedding(rounds: int) -> None:
    """A forward with the shared prefix embeds the prefix ([1, 24]) and the rows' rest ([8, 63]) in two calls, so
    its backward builds two dense [49152, 576] gradients of the tied embedding; one call on both, split after,
    builds one. The tied LM head's gradient (25 positions of 8 rows) is accumulated into the same weight, as in the
    trainer. fp32 weight, bf16 autocast."""
    model = _smollm2()
    emb = model.get_input_embeddings()
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 49152, (1, 24), generator=g)
    rest = torch.randint(3, 49152, (8, 63), generator=g)
    hidden = torch.randn(8, 25, 576, generator=g)
    up_prefix, up_rest = torch.randn(1, 24, 576, generator=g), torch.randn(8, 63, 576, generator=g)

    def loss(e_prefix, e_rest):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = torch.nn.functional.linear(hidden, emb.weight)
        return (e_prefix * up_prefix).sum() + (e_rest * up_rest).sum() + logits.float().mean()

    def two_calls():
        loss(emb(prefix), emb(rest)).backward()

    def one_call():
        both = emb(torch.cat([prefix.reshape(-1), rest.reshape(-1)]))
        loss(both[:24][None], both[24:].view(8, 63, 576)).backward()

    grads = []
    for fn in (two_calls, one_call):
        emb.weight.grad = None
        fn()
        grads.append(emb.weight.grad.clone())
    print(f"[49152, 576] tied embedding; max |difference| of its gradient: {(grads[0] - grads[1]).abs().max():.2e}")

    def clear():
        emb.weight.grad = None

    _alternate({"two calls": two_calls, "one call": one_call}, rounds, clear)


def prefill(rounds: int) -> None:
    """Generation's prefill (no grad, bf16 autocast, SDPA as the trainer samples): 8 rows of 24 shared + 36 tokens
    in one forward, against the 24 shared tokens once at batch 1, their cache repeated to the 8 rows, then the 36
    others; the first token's logits."""
    from transformers import DynamicCache

    model = _smollm2(attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(3, 49152, (1, 24), generator=g)
    ids = torch.cat([shared.expand(8, -1), torch.randint(3, 49152, (8, 36), generator=g)], 1)

    def every_row():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits

    def prefix_once():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            cache = model(input_ids=shared, use_cache=True, logits_to_keep=1).past_key_values
            assert isinstance(cache, DynamicCache)
            cache.batch_repeat_interleave(8)
            return model(input_ids=ids[:, 24:], past_key_values=cache, use_cache=True, logits_to_keep=1).logits

    diff = (every_row().float() - prefix_once().float()).abs().max().item()
    print(f"8 rows x 60 prompt tokens (24 shared); max |difference| of the first token's logits: {diff:.3f}")
    _alternate({"every row": every_row, "prefix once": prefix_once}, rounds)


def tied_head(rounds: int) -> None:
    """The frozen reference under bf16: its Linear weights are held in bf16 (frozen_models_in_compute_dtype), except
    the LM head tied to the fp32 embedding, which autocast casts at every forward (no cast cache for frozen weights).
    Against an untied bf16 copy of that head (56 MB more). The rollout's reference forward: 8 rows x 87 columns, 25
    LM-head positions."""
    from icegrt_trl.ppo.modeling import contiguous_lm_head_input, hold_matmul_weights_in

    ref = _smollm2(attn_implementation="sdpa").eval().requires_grad_(False)
    contiguous_lm_head_input(ref)
    hold_matmul_weights_in(ref, torch.bfloat16)
    assert ref.lm_head.weight.dtype == torch.float32 and ref.lm_head.weight is ref.model.embed_tokens.weight
    copy_head = copy.deepcopy(ref.lm_head).to(torch.bfloat16)
    tied_head_module = ref.lm_head
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 49152, (8, 87), generator=g)

    def forward(head):
        def run():
            ref.lm_head = head
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return ref(input_ids=ids, logits_to_keep=25).logits
        return run

    tied, untied = forward(tied_head_module), forward(copy_head)
    print(f"reference logits bit-equal: {torch.equal(tied(), untied())}")
    _alternate({"tied fp32 head": tied, "bf16 copy": untied}, rounds)
    ref.lm_head = tied_head_module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["decode", "rmsnorm", "clip", "embedding", "prefill", "tied-head"])
    p.add_argument("--rounds", type=int, default=5, help="alternations of the variants (not rmsnorm)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_process()
    if args.what == "rmsnorm":
        rmsnorm()
    else:
        {"decode": decode, "clip": clip, "embedding": embedding, "prefill": prefill,
         "tied-head": tied_head}[args.what](args.rounds)


if __name__ == "__main__":
    main()
