"""Memory plan of a recipe: what each stage holds at its peak, computed from the configs before anything is loaded.

An estimate from first principles, per stage:

* **weights** — parameters × bytes per parameter of the load dtype (4-bit NF4: ~0.52 B for the quantized linear
  layers; embeddings, norms and the LM head stay in the compute dtype);
* **trainable state** — the trained parameters (all, or the LoRA adapters in fp32) with their gradient and AdamW's two
  moments, in the parameters' dtype;
* **activations** — what one micro-batch keeps for the backward pass: per token and layer the inputs of each matmul
  and nonlinearity (~7·h + 2·kv + 5·I values; with checkpointing only the layer input, h, plus one layer's full set),
  and the logits over the vocabulary in fp32 with their softmax gradient, which dominate for 150k-token vocabularies;
* **rollout** (PPO, sampling) — the KV cache of a generation chunk and the no-grad logits of a rollout forward;
* **runtime** — a fixed allowance for the framework (CUDA context and allocator slack, or the Python process on a CPU).

`benchmarks/plan_vs_measured.py` compares these totals with measured peaks (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .recipe import RecipeError

GiB = 1024 ** 3
RUNTIME_BYTES = int(0.75 * GiB)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4, None: 4}
NF4_BYTES = 0.52  # 4 bits + fp32 absmax per 64 weights with double quantization (~4.13 bits)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's defaults for Llama/Qwen2 when no target module is named


@dataclass(frozen=True)
class Architecture:
    """The shapes of a Llama-style decoder (Llama, Qwen2, SmolLM2, Mistral) that memory depends on."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    tied_embeddings: bool
    attention_bias: bool = False  # Qwen2: biases on q, k and v

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, kv, i, q = self.hidden_size, self.kv_size, self.intermediate_size, self.num_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    def linear_parameters(self) -> int:
        """The decoder layers' projection matrices (what 4-bit quantization quantizes), with their biases."""
        bias = self.num_heads * self.head_dim + 2 * self.kv_size if self.attention_bias else 0
        return self.num_layers * (sum(a * b for a, b in self.linear_shapes().values()) + bias)

    def other_parameters(self) -> int:
        """Embeddings, LM head (when untied), norms: what 4-bit quantization leaves in the compute dtype."""
        embed = self.vocab_size * self.hidden_size
        return embed * (1 if self.tied_embeddings else 2) + (2 * self.num_layers + 1) * self.hidden_size

    def parameters(self) -> int:
        return self.linear_parameters() + self.other_parameters()

    def lora_targets(self, targets) -> tuple[str, ...]:
        """The linear layers LoRA adapts: PEFT's defaults for no targets, every projection for ``all-linear``."""
        if targets in (None, [], ()):
            return PEFT_DEFAULT_TARGETS
        if targets == "all-linear" or list(targets) == ["all-linear"]:
            return LINEAR_NAMES
        return tuple(targets)

    def lora_parameters(self, r: int, targets) -> int:
        shapes = self.linear_shapes()
        targets = self.lora_targets(targets)
        unknown = [t for t in targets if t not in shapes]
        if unknown:
            raise ValueError(f"LoRA target modules {unknown} are not linear layers of a Llama-style decoder "
                             f"({list(shapes)}).")
        return self.num_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# Published configs of the models our recipes name, so that a plan needs no download.
KNOWN_ARCHITECTURES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": Architecture(49152, 576, 30, 9, 3, 1536, True),
    "Qwen/Qwen2.5-0.5B-Instruct": Architecture(151936, 896, 24, 14, 2, 4864, True, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Architecture(151936, 1536, 28, 12, 2, 8960, True, True),
    "Qwen/Qwen2.5-7B-Instruct": Architecture(152064, 3584, 28, 28, 4, 18944, False, True),
}
for _name in list(KNOWN_ARCHITECTURES):
    KNOWN_ARCHITECTURES[_name.removesuffix("-Instruct")] = KNOWN_ARCHITECTURES[_name]
KNOWN_ARCHITECTURES["testbed:smollm2"] = KNOWN_ARCHITECTURES["HuggingFaceTB/SmolLM2-135M-Instruct"]


def architecture_from_config(config) -> Architecture:
    config = getattr(config, "lm_config", None) or config  # a GRM reward model wraps its causal LM's config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    bias = getattr(text, "attention_bias", None)
    if bias is None:
        bias = getattr(text, "model_type", "") == "qwen2"  # Qwen2's q/k/v projections always carry biases
    return Architecture(text.vocab_size, text.hidden_size, text.num_hidden_layers, heads,
                        getattr(text, "num_key_value_heads", None) or heads,
                        text.intermediate_size, bool(getattr(text, "tie_word_embeddings", False)), bool(bias))


# ---------------------------------------------------------------------------------------------- pure estimates
def weight_bytes(arch: Architecture, dtype: str | None, load_in_4bit: bool = False) -> int:
    """Bytes of the frozen or trained weights as loaded."""
    b = DTYPE_BYTES.get(dtype, 4)
    if load_in_4bit:
        return int(arch.linear_parameters() * NF4_BYTES + arch.other_parameters() * b)
    return arch.parameters() * b


def trainable_state_bytes(trainable: int, param_bytes: int) -> int:
    """Weights are counted elsewhere: here the gradient plus AdamW's exp_avg and exp_avg_sq, in the parameter dtype."""
    return 3 * trainable * param_bytes


def lora_input_values(arch: Architecture, targets) -> int:
    """Per token and layer, the inputs LoRA keeps for its backward: each adapted linear layer's input again (its
    dropout makes a copy, even where several layers share an input)."""
    shapes = arch.linear_shapes()
    return sum(shapes[t][0] for t in arch.lora_targets(targets) if t in shapes)


def activation_bytes(arch: Architecture, tokens: int, act_bytes: int, checkpointing: bool,
                     lora_targets=False) -> int:
    """What the backward pass keeps from the decoder layers for `tokens` tokens (logits excluded); `lora_targets`
    (anything but False) adds LoRA's own copies of its inputs."""
    per_token_layer = 7 * arch.hidden_size + 2 * arch.kv_size + 5 * arch.intermediate_size
    if lora_targets is not False:
        per_token_layer += lora_input_values(arch, lora_targets)
    if checkpointing:
        return tokens * act_bytes * (arch.num_layers * arch.hidden_size + per_token_layer)
    return tokens * act_bytes * arch.num_layers * per_token_layer


def logits_bytes(arch: Architecture, tokens: int, act_bytes: int, with_grad: bool) -> int:
    """The logits (compute dtype), their fp32 copy for the log-softmax, and under training that copy's gradient."""
    copies = act_bytes + 4 + (4 if with_grad else 0)
    return tokens * arch.vocab_size * copies


def autocast_copy_bytes(arch: Architecture, param_bytes: int, bf16: bool, load_in_4bit: bool = False) -> int:
    """bf16 autocast over fp32 weights caches a bf16 copy of every weight it multiplies, for the whole forward."""
    return arch.parameters() * 2 if bf16 and param_bytes == 4 and not load_in_4bit else 0


def adapted_weight_count(arch: Architecture, targets) -> int:
    """Weights of the linear layers LoRA adapts: what merging the adapter for generation copies (biases are few)."""
    shapes = arch.linear_shapes()
    return arch.num_layers * sum(shapes[t][0] * shapes[t][1] for t in arch.lora_targets(targets))


def kv_cache_bytes(arch: Architecture, rows: int, length: int, act_bytes: int) -> int:
    return 2 * arch.num_layers * arch.kv_size * rows * length * act_bytes


# ---------------------------------------------------------------------------------------------- stage plans
@dataclass
class StagePlan:
    stage: str
    components: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.components.values())


@dataclass
class ModelSetup:
    """How one stage loads and trains its model (from trl's ModelConfig and the TrainingArguments)."""

    arch: Architecture
    dtype: str | None
    load_in_4bit: bool
    lora_r: int | None
    lora_targets: object
    bf16: bool
    checkpointing: bool

    @property
    def act_bytes(self) -> int:
        return 2 if (self.bf16 or self.dtype in ("bfloat16", "float16")) else 4

    @property
    def param_bytes(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 4)

    def weights(self) -> int:
        return weight_bytes(self.arch, self.dtype, self.load_in_4bit)

    def trainable(self) -> tuple[int, int]:
        """(trainable parameters, bytes each): LoRA adapters are fp32 (PEFT upcasts them)."""
        if self.lora_r:
            return self.arch.lora_parameters(self.lora_r, self.lora_targets), 4
        return self.arch.parameters(), self.param_bytes


def _model_setup(arch: Architecture, model_args, train_args) -> ModelSetup:
    return ModelSetup(
        arch=arch, dtype=getattr(model_args, "dtype", None), load_in_4bit=bool(getattr(model_args, "load_in_4bit", False)),
        lora_r=model_args.lora_r if getattr(model_args, "use_peft", False) else None,
        lora_targets=getattr(model_args, "lora_target_modules", None), bf16=bool(getattr(train_args, "bf16", False)),
        checkpointing=bool(getattr(train_args, "gradient_checkpointing", False)))


def _train_components(plan: StagePlan, m: ModelSetup, tokens: int, logit_tokens: int, label: str = "") -> None:
    n, b = m.trainable()
    plan.components[f"weights{label}"] = m.weights() + (n * b if m.lora_r else 0)
    plan.components[f"gradients + AdamW states{label}"] = trainable_state_bytes(n, b)
    plan.components[f"activations{label}"] = activation_bytes(m.arch, tokens, m.act_bytes, m.checkpointing,
                                                              m.lora_targets if m.lora_r else False)
    copies = autocast_copy_bytes(m.arch, m.param_bytes, m.bf16, m.load_in_4bit)
    if copies:
        plan.components[f"bf16 weight copies (autocast){label}"] = copies
    if logit_tokens:
        plan.components[f"logits{label}"] = logits_bytes(m.arch, logit_tokens, m.act_bytes, with_grad=True)


def plan_sft(m: ModelSetup, micro_batch: int, max_length: int) -> StagePlan:
    plan = StagePlan("sft")
    tokens = micro_batch * max_length
    _train_components(plan, m, tokens, tokens)
    plan.notes.append(f"micro-batch {micro_batch} × {max_length} tokens")
    return plan


def plan_reward(m: ModelSetup, micro_batch: int, max_length: int, lm_logits: bool, name: str = "reward") -> StagePlan:
    """Chosen and rejected in one forward; a GRM regularizer also takes LM logits of the chosen answers."""
    plan = StagePlan(name)
    tokens = 2 * micro_batch * max_length
    _train_components(plan, m, tokens, micro_batch * max_length if lm_logits else 0)
    plan.notes.append(f"micro-batch {micro_batch} pairs × 2 × {max_length} tokens"
                      + (", LM logits of the chosen (GRM)" if lm_logits else ""))
    return plan


def plan_ppo(policy: ModelSetup, reward: ModelSetup, args, prompt_length: int) -> StagePlan:
    """LoRA: one base (policy + value adapters, reference = adapters off) and the reward model. Full models: policy,
    value model, reference and reward model, the first two trained."""
    plan = StagePlan("ppo")
    seq = prompt_length + args.response_length
    micro = args.local_micro_batch_size
    tokens = micro * seq
    n, b = policy.trainable()
    if policy.lora_r:
        plan.components["policy base + adapters (policy, value)"] = policy.weights() + 2 * n * b
        plan.components["gradients + AdamW states"] = trainable_state_bytes(2 * n, b)
        models = "one base with policy and value adapters"
    else:
        backbone = policy.arch.parameters() - (0 if policy.arch.tied_embeddings else
                                               policy.arch.vocab_size * policy.arch.hidden_size)
        plan.components["policy"] = policy.weights()
        plan.components["value model"] = backbone * policy.param_bytes
        plan.components["reference"] = policy.weights()
        plan.components["gradients + AdamW states"] = trainable_state_bytes(n + backbone, b)
        models = "four models (policy, value, reference, reward)"
    plan.components["reward model"] = reward.weights()
    on_server = getattr(args, "use_vllm", False)  # the vLLM server samples: its weights and KV cache are its own
    if policy.lora_r and getattr(args, "merge_adapter_for_generation", False) and not on_server:
        plan.components["base weights copy (merge_adapter_for_generation)"] = \
            adapted_weight_count(policy.arch, policy.lora_targets) * policy.param_bytes
    copies = autocast_copy_bytes(policy.arch, policy.param_bytes, policy.bf16, policy.load_in_4bit) \
        + autocast_copy_bytes(reward.arch, reward.param_bytes, policy.bf16, reward.load_in_4bit)
    if copies:
        plan.components["bf16 weight copies (autocast)"] = copies
    # training: the policy and the value forward of one micro-batch, both with grad
    lora = policy.lora_targets if policy.lora_r else False
    train = 2 * activation_bytes(policy.arch, tokens, policy.act_bytes, policy.checkpointing, lora) \
        + logits_bytes(policy.arch, tokens, policy.act_bytes, with_grad=True)
    # rollout: generation chunk KV cache, then no-grad forwards of a chunk: the policy's and the reference's logits
    # over the whole sequence at once, and fp32 log-softmax and entropy temporaries over the response positions
    rows = min(args.local_rollout_forward_batch_size, args.per_device_train_batch_size * args.gradient_accumulation_steps)
    forwards = 2 * rows * seq * policy.arch.vocab_size * policy.act_bytes \
        + rows * args.response_length * policy.arch.vocab_size * 12
    generation = 0 if on_server else generation_bytes(policy.arch, rows, prompt_length, args.response_length,
                                                      policy.act_bytes)
    rollout = max(generation, forwards)
    plan.components["activations (training micro-batch)" if train >= rollout else "rollout (KV cache + logits)"] = \
        max(train, rollout)
    plan.notes.append(f"{models}; micro-batch {micro} × {seq} tokens ({prompt_length} prompt + "
                      f"{args.response_length} response); rollout chunks of {rows} sequences")
    if on_server:
        plan.notes.append("use_vllm: sampling runs in the vLLM server, whose weights and KV cache are not counted "
                          "here; on one GPU, start it with --gpu-memory-utilization small enough to leave this plan "
                          "room")
    return plan


def generation_bytes(arch: Architecture, rows: int, prompt_length: int, new_tokens: int, act_bytes: int) -> int:
    """A generation chunk: the KV cache of the full length, the last position's logits (generate keeps only those),
    and the prefill's transient activations of one layer."""
    seq = prompt_length + new_tokens
    prefill = rows * prompt_length * (2 * arch.hidden_size + 3 * arch.intermediate_size) * act_bytes
    return kv_cache_bytes(arch, rows, seq, act_bytes) + logits_bytes(arch, rows, act_bytes, with_grad=False) + prefill


def plan_generation(m: ModelSetup, name: str, rows: int, prompt_length: int, new_tokens: int,
                    extra_models: int = 0) -> StagePlan:
    """Sampling or judging: weights (plus `extra_models` more of the same size) and a generation chunk."""
    plan = StagePlan(name)
    plan.components["weights"] = m.weights() * (1 + extra_models)
    seq = prompt_length + new_tokens
    plan.components["generation (KV cache + logits)"] = generation_bytes(m.arch, rows, prompt_length, new_tokens,
                                                                          m.act_bytes)
    plan.notes.append(f"chunks of {rows} sequences × {seq} tokens")
    return plan


# ---------------------------------------------------------------------------------------------- recipes
class PlanError(RecipeError):
    """A recipe whose memory cannot be planned (an unknown model architecture) or that does not fit."""


def parse_memory(text: str | None) -> int | None:
    """``"24GB"``, ``"24GiB"``, ``"80g"`` or a plain number of GiB → bytes."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([\d.]+)\s*(g|gb|gib)?\s*", str(text).lower())
    if not m:
        raise PlanError(f"--gpu-memory {text!r}: give a size such as 24GB or 80GiB.")
    return int(float(m.group(1)) * GiB)


def resolve_architecture(spec: str, recipe, ctx) -> Architecture:
    """The architecture behind a model spec, without loading weights (configs only, offline)."""
    from pathlib import Path

    seen = set()
    while spec and spec.startswith("stage:") and spec not in seen:  # follow the recipe to the stage's own model
        seen.add(spec)
        folder = ctx.stage_dir(spec[len("stage:"):])
        if (folder / "config.json").is_file():
            spec = str(folder)
            break
        section = recipe.stages.get(spec[len("stage:"):], {})
        spec = section.get("model_name_or_path") or ("stage:sft" if spec == "stage:ppo" else None)
    if not spec:
        raise PlanError("A stage's model cannot be traced through the recipe: name model_name_or_path.")
    if spec in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[spec]
    if spec.startswith("testbed:"):
        from .stages.loading import parse_testbed_spec
        from .testbed import build_tokenizer, tiny_config

        arch, size = parse_testbed_spec(spec)
        return architecture_from_config(tiny_config(arch, build_tokenizer(), **size))
    from transformers import AutoConfig

    try:
        kwargs = {} if Path(spec).is_dir() else {"local_files_only": True}
        return architecture_from_config(AutoConfig.from_pretrained(spec, **kwargs))
    except (OSError, ValueError) as err:
        raise PlanError(f"Cannot read the config of {spec!r} offline ({type(err).__name__}). Plans know "
                        f"{sorted(k for k in KNOWN_ARCHITECTURES if '/' in k)}; for another model download its "
                        "config.json once (huggingface-cli download MODEL config.json) or give a local folder.") from None


def plan_recipe(recipe, ctx, prompt_length: int = 256) -> list[StagePlan]:
    """A plan for every stage of `recipe` that holds a model, in recipe order."""
    from .cli import parse_stage_configs
    from .stages import get_stage

    plans = []
    for name in recipe.stages:
        stage = get_stage(name)
        configs = parse_stage_configs(stage, recipe, ctx, [])
        by_type = {type(c).__name__: c for c in configs}
        model_args = by_type.get("ModelConfig")
        if name in ("sft", "reward", "reward_pmp"):
            train = configs[2]
            m = _model_setup(resolve_architecture(model_args.model_name_or_path, recipe, ctx), model_args, train)
            if name == "sft":
                plans.append(plan_sft(m, train.per_device_train_batch_size, train.max_length or 1024))
            else:
                grm = by_type["RewardModelArguments"].reward_model_type == "grm" or bool(train.grm_regularizer)
                plans.append(plan_reward(m, train.per_device_train_batch_size, train.max_length or 1024,
                                         lm_logits=bool(train.grm_regularizer), name=name))
                if grm:
                    plans[-1].notes.append("GRM reward model: the LM head is kept")
        elif name in ("ppo", "rlp"):
            ppo_stage = get_stage("ppo")
            pm, _, pargs, rargs, _ = parse_stage_configs(ppo_stage, recipe, ctx, [])
            spec = pm.model_name_or_path or pargs.sft_model_path or "stage:sft"
            policy = _model_setup(resolve_architecture(spec, recipe, ctx), pm, pargs)
            reward_spec = pargs.reward_model_path or "stage:reward"
            reward_arch = resolve_architecture(reward_spec, recipe, ctx) if reward_spec != "gold" else None
            rm_dtype = pm.dtype if rargs.reward_model_dtype == "auto" else rargs.reward_model_dtype
            reward = ModelSetup(reward_arch or policy.arch, rm_dtype, rargs.reward_model_load_in_4bit, None, None,
                                pargs.bf16, False)
            plen = pargs.max_prompt_length or prompt_length
            p = plan_ppo(policy, reward, pargs, plen)
            if reward_spec == "gold":
                p.components["reward model"] = 0
            if name == "rlp":
                # one process refits the reward model, then runs PPO again: its peak is the larger of the two
                refit = next((q for q in plans if q.stage == "reward"), None)
                if refit is not None and refit.total > p.total:
                    p = StagePlan(p.stage, dict(refit.components), list(refit.notes))
                    p.notes.append("the reward refit is this stage's peak (its PPO part is planned under 'ppo')")
                else:
                    p.notes.append("its PPO part is this stage's peak (the reward refit is planned under 'reward')")
                p.stage = "rlp (refit reward model, then PPO again)"
            plans.append(p)
        elif name == "sample_preferences":
            args = by_type["SamplePreferencesArguments"]
            m = _model_setup(resolve_architecture(model_args.model_name_or_path, recipe, ctx), model_args, None)
            plans.append(plan_generation(m, name, args.sample_batch_size, prompt_length, args.max_new_tokens))
        elif name == "eval" and configs[0].mode == "reward":
            reward_section = recipe.stages.get("reward", {})
            arch = resolve_architecture("stage:reward", recipe, ctx)
            m = ModelSetup(arch, reward_section.get("dtype", "float32"), False, None, None, False, False)
            p = StagePlan(name, {"weights (one reward model at a time)": m.weights(),
                                 "forward (no grad, batch 64)": 64 * reward_section.get("max_length", 1024)
                                 * (2 * arch.hidden_size + 3 * arch.intermediate_size) * m.act_bytes})
            plans.append(p)
        elif name == "eval":
            ev = configs[0]
            spec = ev.reference_policy if ev.reference_policy != "stage:sft" or "sft" in recipe.stages else "stage:ppo"
            arch = resolve_architecture(spec, recipe, ctx)
            m = ModelSetup(arch, ev.dtype if ev.dtype != "auto" else "float32", False, None, None, False, False)
            new = configs[2].judge_max_new_tokens
            plans.append(plan_generation(m, name, 64, prompt_length, new, extra_models=1))
            if ev.kl_num_prompts:  # sampled_kl: both models' full-sequence logits of a chunk of 32, fp32 log-softmax
                plans[-1].components["KL forwards (logits)"] = logits_bytes(
                    arch, min(32, ev.kl_num_prompts) * (prompt_length + new), m.act_bytes, with_grad=False)
            plans[-1].notes.append("two policies at once (the one judged and the KL reference)")
    for p in plans:
        p.components["runtime (framework, allocator slack)"] = RUNTIME_BYTES
    return plans


def render_plan(plans: list[StagePlan], budget: int | None) -> str:
    lines = []
    for p in plans:
        verdict = ""
        if budget:
            verdict = "fits" if p.total <= budget else "DOES NOT FIT"
            verdict = f" — {verdict} in {budget / GiB:.0f} GiB ({100 * p.total / budget:.0f} %)"
        lines.append(f"{p.stage}: {p.total / GiB:.2f} GiB{verdict}")
        lines += [f"    {k:<44} {v / GiB:8.2f} GiB" for k, v in p.components.items()]
        lines += [f"    note: {n}" for n in p.notes]
    return "\n".join(lines)


def check_fits(plans: list[StagePlan], budget: int) -> None:
    over = [p for p in plans if p.total > budget]
    if over:
        worst = max(over, key=lambda p: p.total)
        raise PlanError(
            f"The recipe does not fit in {budget / GiB:.0f} GiB: stage '{worst.stage}' needs ~{worst.total / GiB:.1f} "
            f"GiB by the memory plan (icegrt-trl plan RECIPE --gpu-memory ...). Lower per_device_train_batch_size "
            f"(raise gradient_accumulation_steps), enable gradient_checkpointing, use LoRA (use_peft) or 4-bit "
            f"(load_in_4bit), or shorten max_length / response_length.")


__all__ = ["Architecture", "KNOWN_ARCHITECTURES", "PlanError", "StagePlan", "activation_bytes", "adapted_weight_count",
           "check_fits", "kv_cache_bytes", "logits_bytes", "parse_memory", "plan_recipe", "render_plan", "weight_bytes"]
