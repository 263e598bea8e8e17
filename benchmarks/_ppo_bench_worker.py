"""One benchmark run in its own process: build the models, run PPO updates, print one JSON line.

Called by `benchmarks/ppo_vs_trl112.py` (not meant to be run by hand, but it works):

    PYTHONPATH=/work/trl112 python benchmarks/_ppo_bench_worker.py --impl trl112 --mode full --size tiny
    python benchmarks/_ppo_bench_worker.py --impl ours --mode lora --size 100m

`--impl trl112` needs trl 1.12.0 first on PYTHONPATH (it imports `trl.experimental.ppo`); `--impl ours` imports
`icegrt_trl.PPOTrainer` from the main environment. Both sides get the same models (same configs, same seeds), the
same pre-tokenized prompts and the same PPO settings. Timing: wall-clock between the ends of consecutive PPO
updates (rollout + `num_ppo_epochs` passes), measured with a TrainerCallback; the first update (warm-up) is
excluded. Memory: peak RSS of this process (`ru_maxrss`, whole lifetime) and a 20 ms psutil sampler started after
the models are built.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import resource
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from icegrt_trl.testbed import (  # noqa: E402
    build_tokenizer,
    count_parameters,
    make_datasets,
    tiny_causal_lm,
    tiny_sequence_classifier,
)

# Model sizes. "tiny" is the testbed default (the models of the test suite); "100m" is a Llama whose weights dominate
# memory: 12 layers × (4·768² attention + 3·768·3072 MLP) ≈ 113M parameters (the vocabulary is only ~37 tokens).
SIZES = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4),
    "100m": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}

# PPO settings shared by both sides. gradient_accumulation_steps=1 and num_mini_batches=1 because the two
# PPOConfigs size a rollout differently when they are > 1 (see docs/benchmarks.md); with 1/1 both make one rollout of
# per_device_train_batch_size sequences and num_ppo_epochs optimizer steps of that many sequences.
PPO_SETTINGS = dict(
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    num_mini_batches=1,
    num_ppo_epochs=4,
    local_rollout_forward_batch_size=8,
    response_length=16,
    temperature=0.7,
    stop_token="eos",
    missing_eos_penalty=1.0,
    kl_coef=0.05,
    kl_estimator="k1",
    cliprange=0.2,
    vf_coef=0.1,
    cliprange_value=0.2,
    gamma=1.0,
    lam=0.95,
    whiten_rewards=False,
    learning_rate=1e-5,
    num_sample_generations=0,
    # Neither trainer may differ in precision or recomputation: trl 1.12's loop never enables gradient checkpointing
    # and builds its Accelerator without mixed precision, so both run fp32 without checkpointing.
    bf16=False,
    fp16=False,
    gradient_checkpointing=False,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
    seed=0,
    dataloader_num_workers=0,
)


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class RSSSampler(threading.Thread):
    def __init__(self, period: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.period, self.peak, self._halt = psutil.Process(), period, 0, threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.period)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak / 2**20


class PhaseTimer:
    """Implementation-agnostic split of the wall-clock time into phases, by wrapping what both trainers call:
    `generate` of the policy (generation, with every forward inside it), forward hooks on each transformer backbone
    (labelled by model and by grad mode: `fwd/<model>` without grad, `fwd+grad/<model>` with grad),
    `Tensor.backward`, optimizer steps (global optimizer hooks), `gc.collect` and `torch.cuda.empty_cache`.
    Under PEFT the one backbone is labelled by its active adapter at call time (off → `ref`). What is not covered
    (losses, GAE, logging, data, Python glue) is `other`."""

    def __init__(self):
        self.totals, self.calls, self._stack, self._t = {}, {}, [], {}

    def add(self, name, dt):
        self.totals[name] = self.totals.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + 1

    def timed(self, name, fn):
        timer = self

        def wrapper(*a, **k):
            if timer._stack:
                return fn(*a, **k)
            timer._stack.append(name)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timer.add(name, time.perf_counter() - t0)
                timer._stack.pop()

        return wrapper

    def hook_backbone(self, module, label):
        def pre(mod, args, kwargs):
            name = label() if callable(label) else label
            name = ("fwd+grad/" if torch.is_grad_enabled() else "fwd/") + name
            if not self._stack:
                self._stack.append(name)
                self._t[id(mod)] = time.perf_counter()
            else:
                self._t[id(mod)] = None

        def post(mod, args, kwargs, out):
            t0 = self._t.pop(id(mod), None)
            if t0 is not None:
                name = self._stack.pop()
                self.add(name, time.perf_counter() - t0)

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)

    def install(self, trainer, models: dict):
        """models: label -> model whose backbone to hook (one backbone is hooked once)."""
        import torch.optim.optimizer as optmod

        seen = set()
        for label, model in models.items():
            if model is None:
                continue
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            body = getattr(base, base.base_model_prefix)
            if id(body) in seen:
                continue
            seen.add(id(body))
            tuner = [m for m in body.modules() if hasattr(m, "_disable_adapters") and hasattr(m, "_active_adapter")]
            if tuner:
                layer = tuner[0]

                def peft_label(layer=layer):
                    if layer._disable_adapters:
                        return "ref(adapters off)"
                    act = layer._active_adapter
                    act = act[0] if isinstance(act, (list, tuple)) else act
                    return "value" if "value" in str(act) else f"policy[{act}]"

                self.hook_backbone(body, peft_label)
            else:
                self.hook_backbone(body, label)
        policy = models["policy"]
        for obj in {id(policy): policy, id(getattr(policy, "get_base_model", lambda: policy)()):
                    getattr(policy, "get_base_model", lambda: policy)()}.values():
            obj.generate = self.timed("generation", obj.generate)
        if hasattr(trainer, "_generate_with_vllm"):  # ours with use_vllm: the server's sampling, HTTP included
            trainer._generate_with_vllm = self.timed("generation", trainer._generate_with_vllm)
        torch.Tensor.backward = self.timed("backward", torch.Tensor.backward)
        gc.collect = self.timed("gc.collect", gc.collect)
        torch.cuda.empty_cache = self.timed("empty_cache", torch.cuda.empty_cache)

        def step_pre(opt, args, kwargs):
            self._stack.append("optimizer.step")
            self._t["opt"] = time.perf_counter()

        def step_post(opt, args, kwargs):
            self.add(self._stack.pop(), time.perf_counter() - self._t.pop("opt"))

        optmod.register_optimizer_step_pre_hook(step_pre)
        optmod.register_optimizer_step_post_hook(step_post)

    def snapshot(self):
        return dict(self.totals), dict(self.calls)


class UpdateTimer(TrainerCallback):
    """Wall-clock time of each PPO update: from the end of the previous update (or train begin) to the end of this
    one. trl 1.12 calls `on_step_end` once per update; a Trainer-based PPO calls it once per optimizer step, so
    `steps_per_update` groups them."""

    def __init__(self, steps_per_update: int, phases: PhaseTimer | None = None):
        self.steps_per_update, self.marks, self.n, self.phases, self.snaps = steps_per_update, [], 0, phases, []
        self.faults: list[int] = []  # the process's minor page faults at each mark (fresh memory from the kernel)
        self.after_first_update = None  # called once the warm-up update has ended (starts a profiler)

    def on_train_begin(self, args, state, control, **kw):
        self.marks = [time.perf_counter()]
        self.faults = [resource.getrusage(resource.RUSAGE_SELF).ru_minflt]
        self.snaps = [self.phases.snapshot()] if self.phases else []

    def on_step_end(self, args, state, control, **kw):
        self.n += 1
        if self.n % self.steps_per_update == 0:
            self.marks.append(time.perf_counter())
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
            if len(self.marks) == 2 and self.after_first_update is not None:
                self.after_first_update()
            if self.phases:
                self.snaps.append(self.phases.snapshot())

    def phase_seconds(self, skip: int = 1) -> dict:
        """Mean seconds per update of each phase over the updates after the first `skip`."""
        if len(self.snaps) < skip + 2:
            return {}
        (t0, c0), (t1, c1) = self.snaps[skip], self.snaps[-1]
        n = len(self.snaps) - 1 - skip
        out = {k: {"s": (t1[k] - t0.get(k, 0.0)) / n, "calls": (c1[k] - c0.get(k, 0)) / n} for k in t1}
        wall = sum(self.durations()[skip:]) / n
        out["other"] = {"s": wall - sum(v["s"] for v in out.values()), "calls": 0}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["s"]))

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def page_faults(self) -> list[int]:
        """Minor page faults of each update (each one a 4 KiB page the kernel zero-filled for a fresh buffer)."""
        return [b - a for a, b in zip(self.faults, self.faults[1:])]


def build_models(size: str, mode: str, impl: str, tokenizer):
    kw = SIZES[size]
    policy = tiny_causal_lm("llama", tokenizer, seed=0, **kw)
    reward = tiny_sequence_classifier("llama", tokenizer, seed=1, **kw)
    reward.eval().requires_grad_(False)
    if mode == "full":
        ref = tiny_causal_lm("llama", tokenizer, seed=0, **kw)  # same weights as the policy
        value = tiny_sequence_classifier("llama", tokenizer, seed=2, **kw)
        return policy, ref, reward, value
    return policy, None, reward, None


def smollm2_setup(mode: str, base_dtype: str):
    """SmolLM2-135M-Instruct as all four models (reward and value: the same body with a new one-output head, seeded),
    and the chat testbed's prompts through its chat template, pre-tokenized for both trainers."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from icegrt_trl.testbed import TestbedConfig
    from icegrt_trl.testbed.smollm2 import smollm2_path

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # SmolLM2's pad token is its EOS, <|im_end|>, which also closes every chat turn of a prompt. trl 1.12 builds its
    # attention mask as `queries != pad_token_id`, so it would mask those tokens out and sample from corrupted prompts
    # (shorter samples: less work). Both trainers get <|endoftext|> as pad instead, a token no chat prompt holds.
    tokenizer.pad_token = "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    data = make_datasets(TestbedConfig(suite="chat", seed=0, num_sft=0, num_unlabeled=256, num_eval=8))

    def tok(b):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in b["prompt"]]
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    train = data["unlabeled"].map(tok, batched=True, remove_columns=["prompt"])
    evals = data["eval"].map(tok, batched=True, remove_columns=["prompt"])
    dtype = getattr(torch, base_dtype) if mode == "lora" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

    def classifier(seed):
        torch.manual_seed(seed)
        m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        m.config.pad_token_id = tokenizer.pad_token_id
        return m

    reward = classifier(1)
    reward.eval().requires_grad_(False)
    if mode == "full":
        return tokenizer, train, evals, (policy, AutoModelForCausalLM.from_pretrained(path, dtype=dtype), reward,
                                         classifier(2))
    return tokenizer, train, evals, (policy, None, reward, None)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def timer_response_tokens(trainer) -> float | None:
    """Mean response tokens per row of the last rollout (ours: its buffer; trl 1.12 keeps none): the work check."""
    last = getattr(trainer, "_last_rollout", None)
    return float(last["response_mask"].sum(1).float().mean()) if last is not None else None


def make_trainer(impl: str, mode: str, size: str, updates: int, out_dir: str, timer: UpdateTimer,
                 overrides: dict | None = None, base_dtype: str = "float32", full_length: bool = False):
    if size == "smollm2":
        tokenizer, train, evals, (policy, ref, reward, value) = smollm2_setup(mode, base_dtype)
    else:
        tokenizer = build_tokenizer()
        data = make_datasets(seed=0, num_unlabeled=512, num_eval=16)
        tok = lambda b: {"input_ids": tokenizer(b["prompt"], add_special_tokens=False)["input_ids"]}  # noqa: E731
        train = data["unlabeled"].map(tok, batched=True, remove_columns=["prompt"])
        evals = data["eval"].map(tok, batched=True, remove_columns=["prompt"])
        policy, ref, reward, value = build_models(size, mode, impl, tokenizer)
    if full_length:
        # before the trainers are built: ours takes its stop tokens from the model's generation_config when
        # stop_token is None (trl 1.12 reads it at each generate call)
        for m in (policy, ref):
            if m is not None and getattr(m, "generation_config", None) is not None:
                m.generation_config.eos_token_id = None
    if impl == "ours" and (overrides or {}).get("value_head_on_policy"):
        value = None  # the value head sits on the policy; no value model is built for it
    models = [m for m in (policy, ref, reward, value) if m is not None]
    weights = {"n_models": len(models), "params": sum(count_parameters(m) for m in models),
               "param_bytes": sum(p.numel() * p.element_size() for m in models for p in m.parameters()),
               "params_per_model": count_parameters(policy),
               "model_config": policy.config.get_text_config().to_dict(),
               "mean_prompt_tokens": statistics.mean(len(x) for x in train["input_ids"])}
    settings = dict(PPO_SETTINGS, **(overrides or {}), output_dir=out_dir)
    settings["total_episodes"] = updates * settings["per_device_train_batch_size"]
    peft_config = lora_config() if mode == "lora" else None
    if impl == "trl112":
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        args = PPOConfig(**settings)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=train, value_model=value, eval_dataset=evals, callbacks=[timer],
                             peft_config=peft_config)
        timer.steps_per_update = 1
    else:
        from icegrt_trl import PPOConfig, PPOTrainer

        args = PPOConfig(**settings)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=train, value_model=value, eval_dataset=evals, callbacks=[timer],
                             peft_config=peft_config)
        timer.steps_per_update = args.num_ppo_epochs * args.num_mini_batches
    return trainer, weights, dict(policy=getattr(trainer, "policy_model", policy),
                                  ref=ref, reward=reward, value=value)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["trl112", "ours"], required=True)
    p.add_argument("--mode", choices=["full", "lora"], default="full")
    p.add_argument("--size", choices=sorted(SIZES) + ["smollm2"], default="tiny",
                   help="testbed Llama sizes, or smollm2: SmolLM2-135M-Instruct (49k vocabulary) on chat prompts")
    p.add_argument("--bf16", action="store_true", help="bf16=True on both sides (trl 1.12 ignores it)")
    p.add_argument("--base-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="LoRA mode with smollm2: dtype the frozen base is loaded in")
    p.add_argument("--batch", type=int, help="per_device_train_batch_size (= rollout batch here)")
    p.add_argument("--response-length", type=int)
    p.add_argument("--ppo-epochs", type=int)
    p.add_argument("--gradient-checkpointing", action="store_true", help="ours only: recompute activations")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="ours only: further PPOConfig fields (values parsed as YAML), e.g. value_head_on_policy=true")
    p.add_argument("--full-length", action="store_true",
                   help="equal work: no stop token, every sample runs to response_length in both trainers")
    p.add_argument("--updates", type=int, default=4, help="PPO updates, the first one is warm-up (not timed)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same on both sides)")
    p.add_argument("--profile", help="write cProfile stats of train() to this path")
    p.add_argument("--torch-profile",
                   help="write torch.profiler's operator table of the updates after the first (self CPU time) here")
    p.add_argument("--by-shape", action="store_true",
                   help="with --torch-profile: one row per operator and input shapes (which matmul, which buffer)")
    p.add_argument("--phases", action="store_true", help="split each update's time into phases (small overhead)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="apply our cpu_keep_freed_memory allocator setting at start (for trl 1.12: the same setting "
                        "in its process; ours applies it itself unless --set cpu_keep_freed_memory=false)")
    p.add_argument("--plain-eager-attention", action="store_true",
                   help="ours: where bf16 on a CPU switches to eager attention, use transformers' eager (key/value "
                        "heads copied per query head) instead of our grouped eager attention (an A/B control)")
    args = p.parse_args(argv)
    if args.plain_eager_attention:
        from icegrt_trl.ppo import grouped_attention

        grouped_attention.GROUPED_MODEL_TYPES = frozenset()
    if args.torch_profile and args.updates < 2:
        p.error("--torch-profile profiles the updates after the first: give --updates 2 or more")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.keep_freed_memory:  # loaded from its file: importing icegrt_trl would import our trainer (and trl)
        import importlib.util

        path = Path(__file__).resolve().parents[1] / "icegrt_trl" / "ppo" / "cpu_memory.py"
        spec = importlib.util.spec_from_file_location("cpu_memory", path)
        cpu_memory = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cpu_memory)
        assert cpu_memory.keep_freed_memory_in_process()

    import trl
    import transformers

    phases = PhaseTimer() if args.phases else None
    timer = UpdateTimer(1, phases)
    with tempfile.TemporaryDirectory() as out_dir:
        overrides = {}
        if args.bf16:
            overrides.update(bf16=True, use_cpu=not torch.cuda.is_available())
        if args.batch:
            overrides["per_device_train_batch_size"] = overrides["local_rollout_forward_batch_size"] = args.batch
        if args.response_length:
            overrides["response_length"] = args.response_length
        if args.ppo_epochs:
            overrides["num_ppo_epochs"] = args.ppo_epochs
        if args.gradient_checkpointing:
            overrides["gradient_checkpointing"] = True
        for item in args.set:
            import yaml

            key, _, value = item.partition("=")
            overrides[key] = yaml.safe_load(value)
        if args.full_length:
            # no stop token; trl 1.12's generate would still stop at the EOS of the model's generation_config
            # (transformers fills unset fields from it), so make_trainer unsets it
            overrides.update(stop_token=None, missing_eos_penalty=None)
        trainer, weights, models = make_trainer(args.impl, args.mode, args.size, args.updates, out_dir, timer,
                                                overrides, args.base_dtype, args.full_length)
        if args.full_length and args.impl == "ours":
            # with stop_token=None our trainer still stops at the tokenizer's EOS when the model names none; here
            # nothing stops a sample (no truncation either), as in trl 1.12 with the EOS unset
            trainer.stop_token_ids = []
            trainer.generation_config.eos_token_id = trainer.greedy_generation_config.eos_token_id = None
        if phases:
            phases.install(trainer, models)
        gc.collect()
        rss_before = rss_mib()
        sampler = RSSSampler()
        sampler.start()
        prof = cProfile.Profile() if args.profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        if args.torch_profile:  # the updates after the first: the warm-up's one-off allocations are not in it
            tprof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                           record_shapes=args.by_shape)
            timer.after_first_update = tprof.start
            trainer.train()
            tprof.stop()
            table = tprof.key_averages(group_by_input_shape=args.by_shape)
            Path(args.torch_profile).write_text(table.table(sort_by="self_cpu_time_total",
                                                            row_limit=60 if args.by_shape else 40))
        else:
            trainer.train()
        if prof:
            prof.disable()
        total = time.perf_counter() - t0
        peak_sampled = sampler.stop()
    if prof:
        prof.dump_stats(args.profile)
    durations = timer.durations()
    timed = durations[1:]
    result = {
        "impl": args.impl, "mode": args.mode, "size": args.size, "trl": trl.__version__,
        "settings": {k: getattr(trainer.args, k, None) for k in (
            "per_device_train_batch_size", "response_length", "num_ppo_epochs", "num_mini_batches", "bf16",
            "gradient_checkpointing", "value_head_on_policy", "merge_adapter_for_generation", "stop_token")},
        "full_length": args.full_length, "response_tokens": timer_response_tokens(trainer),
        "pad_token": trainer.processing_class.pad_token, "eos_token": trainer.processing_class.eos_token,
        "base_dtype": args.base_dtype,
        "transformers": transformers.__version__, "torch": torch.__version__, "threads": args.threads,
        "updates": len(durations), "warmup_s": durations[0] if durations else None, "update_s": timed,
        "page_faults_per_update": timer.page_faults()[1:],
        "s_per_update": (statistics.median(timed) if timed else None), "train_s": total,
        "rss_after_build_mib": rss_before, "peak_rss_sampled_mib": peak_sampled,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **weights,
    }
    if args.impl == "ours":  # which version of our trainer was measured
        import hashlib

        import icegrt_trl.ppo as ours_pkg

        h = hashlib.sha256()
        for f in sorted(Path(ours_pkg.__file__).parent.rglob("*.py")):
            h.update(f.read_bytes())
        result["icegrt_ppo_sha256"] = h.hexdigest()[:12]
    if phases:
        result["phases"] = timer.phase_seconds()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
