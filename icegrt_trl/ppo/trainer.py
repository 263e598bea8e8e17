"""PPOTrainer: PPO with a critic on current TRL, built on ``transformers.Trainer`` the way TRL's GRPO/RLOO are.

One *rollout* (generate → score → shape rewards → GAE) is made in ``_prepare_inputs`` and buffered; the next
``num_ppo_epochs × num_mini_batches × gradient_accumulation_steps`` micro-batches are slices of it, and the losses
are computed in ``compute_loss``. Trainer supplies the optimizer, schedule, gradient accumulation, checkpoints,
resume, ``report_to``, callbacks and multi-process runs. Plugin state (reward moments, KL coefficient, warm-up
progress, ptx stream position) and a partly used rollout are saved with each checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from collections import defaultdict
from typing import Any, Callable

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import RepeatSampler, disable_dropout_in_model, entropy_from_logits, identity, \
    selective_log_softmax

from ..cards import write_ppo_model_card
from ..plugins.registry import resolve_plugin
from ..quantization import keep_4bit_layers_differentiable
from . import core
from .config import PPOConfig
from .cpu_memory import keep_freed_memory_in_process
from .data import decode_completions, is_conversational_prompt, left_pad, prepare_prompt_dataset, prepare_ptx_rows
from .generation import generate_rollouts, log_ignored_generation_settings, rollout_generation_config
from .checkpoints import (load_policy_and_value, load_rollout, read_ppo_state, save_policy_and_value, save_rollout,
                          write_ppo_state)
from .modeling import (PolicyAndValue, adapter_scope, assemble_models, attention_implementation,
                       contiguous_lm_head_input, hold_matmul_weights_in, is_quantized, lora_layers_of,
                       merged_adapter, model_output, position_ids_from, use_eager_attention)
from .plugins import HOOK_NAMES, run_hooks
from .prefix import prefix_length_to_share, reentrant_checkpointing, split_shared_prefix
from .rewards import build_reward_sources


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean token cross-entropy (labels ``-100`` ignored) in fp32, ``chunk`` positions at a time."""
    total = logits.new_zeros((), dtype=torch.float32)
    for s in range(0, logits.shape[1], chunk):
        part = logits[:, s:s + chunk].float()
        total = total + nn.functional.cross_entropy(part.reshape(-1, part.shape[-1]),
                                                    labels[:, s:s + chunk].reshape(-1), ignore_index=-100,
                                                    reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def response_entropies(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token entropy of ``softmax(logits / temperature)``, in fp32 (a metric: a full-vocabulary pass)."""
    return entropy_from_logits(logits.float() / (temperature + 1e-7))


def response_logprobs(logits: torch.Tensor, responses: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(token) under ``logits / temperature``, in fp32 whatever the logits' dtype (one recipe for the rollout,
    the reference and the training forward, so that equal logits give bit-equal log-probs)."""
    return selective_log_softmax(logits.float() / (temperature + 1e-7), responses)


_SAMPLE_KEYS = ("query_responses", "query_response_mask", "responses", "response_mask")
_TENSOR_KEYS = _SAMPLE_KEYS + ("logprobs", "ref_logprobs", "values", "advantages", "returns")


class PPOTrainer(_BaseTrainer):
    """PPO for RLHF with a value model, on ``transformers.Trainer``.

    Args:
        args: a :class:`PPOConfig`.
        processing_class: the policy's tokenizer (a missing pad token is set to EOS, with a warning).
        model: the policy (a causal LM, or a ``PeftModel``).
        ref_model: frozen reference. ``None``: under PEFT the policy with adapters off (or ``args.ref_adapter_name``),
            otherwise a frozen copy of the policy.
        reward_model: a sequence-classification model, a callable ``(prompts, completions, **kw) -> list[float]``,
            or a list of these (weighted by ``args.reward_weights``).
        train_dataset: ``prompt`` column (text or chat messages) or pre-tokenized ``input_ids``.
        value_model: a sequence classifier or causal LM whose backbone gets a scalar head. ``None``: built from the
            policy's backbone (a copy; under PEFT a second adapter ``"value"`` on the same base) with a new head.
        eval_dataset: prompts for ``evaluate()`` (mean score of greedy completions) and sample generations.
        peft_config: a ``peft`` config to wrap ``model`` (LoRA / QLoRA on a 4-bit base).
        callbacks, optimizers: as in ``transformers.Trainer``.
        plugins: plugin instances (or registry names) overriding the ones named in ``args`` — reward scaling,
            KL controller, advantage normalization, value warm-up, ptx — and any number of :class:`PPOHook`.
        ptx_dataset: SFT/pretraining data for the ptx loss (``args.ptx_coef`` > 0).
        reward_processing_classes: the tokenizer of each reward model that does not share the policy's tokenizer.
        dataset_name: the prompts' dataset, named on the model card (TRL's card field).
    """

    _tag_names = ["trl", "ppo", "icegrt-trl"]
    _name = "PPO"
    loss_is_scaled_for_ga = False  # Trainer divides our loss by the accumulation steps

    def __init__(
        self,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        ref_model: PreTrainedModel | None = None,
        reward_model: PreTrainedModel | Callable | list | None = None,
        train_dataset: Dataset | None = None,
        value_model: PreTrainedModel | None = None,
        eval_dataset: Dataset | None = None,
        peft_config=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        plugins: list | None = None,
        ptx_dataset: Dataset | None = None,
        reward_processing_classes=None,
        dataset_name: str | None = None,
    ):
        self.dataset_name = dataset_name
        if not isinstance(args, PPOConfig):
            raise TypeError(f"`args` must be a PPOConfig, got {type(args).__name__}.")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required.")
        tok = processing_class
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError("The tokenizer has neither a pad token nor an EOS token.")
            warnings.warn("The tokenizer has no pad token; using its EOS token as pad token.", stacklevel=2)
            tok.pad_token = tok.eos_token
        for name in ("sft_model_path", "reward_model_path"):
            if getattr(args, name) is not None:
                warnings.warn(
                    f"PPOConfig.{name}={getattr(args, name)!r} is ignored by PPOTrainer (as by trl 1.12's, where only "
                    "the example script read it): pass the models as PPOTrainer(model=..., reward_model=...). The "
                    "recipe's ppo stage reads it.", stacklevel=2)
        world = args.world_size
        self._validate_sizes(args, train_dataset, world)

        # ---- models
        models = assemble_models(model, args, peft_config, value_model, ref_model)
        wrapper, model = models.wrapper, models.wrapper.policy
        self.ref_model, self.is_peft, self.policy_adapter = models.ref_model, models.is_peft, models.policy_adapter
        # QLoRA on a CPU: the 4-bit base must keep its backward through the rollouts' eval-mode forwards
        keep_4bit_layers_differentiable(wrapper)

        # ---- rewards
        self.reward_sources = build_reward_sources(reward_model, tok, reward_processing_classes,
                                                   args.local_rollout_forward_batch_size)
        weights = args.reward_weights or [1.0] * len(self.reward_sources)
        if len(weights) != len(self.reward_sources):
            raise ValueError(f"{len(weights)} reward_weights for {len(self.reward_sources)} reward sources.")
        self.reward_weights = [float(w) for w in weights]
        for s in self.reward_sources:
            if hasattr(s, "model"):
                disable_dropout_in_model(s.model)

        # ---- plugins
        self._init_plugins(args, plugins or [], ptx_dataset)

        # ---- data
        max_pos = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        max_prompt = args.max_prompt_length or (max_pos - args.response_length if max_pos else None)
        if max_prompt is not None and max_prompt < 1:
            raise ValueError(f"response_length={args.response_length} leaves no room for prompts within "
                             f"max_position_embeddings={max_pos}.")
        train_dataset = prepare_prompt_dataset(train_dataset, tok, max_prompt, args.dataset_num_proc)
        if eval_dataset is not None:
            eval_dataset = prepare_prompt_dataset(eval_dataset, tok, max_prompt, args.dataset_num_proc,
                                                  name="eval_dataset")
        if self.ptx is not None:
            self.ptx.set_data(prepare_ptx_rows(ptx_dataset, tok, max_pos or 2048), rank=args.process_index,
                              world=world)

        # ---- schedule: optimizer steps from total_episodes (episodes = generated sequences)
        global_batch = args.local_batch_size * world
        if args.total_episodes is None:
            args.total_episodes = int(args.num_train_epochs * len(train_dataset) * args.num_samples_per_prompt)
        self.num_rollouts = max(1, math.ceil(args.total_episodes / global_batch))
        if args.max_steps is None or args.max_steps <= 0:
            args.max_steps = self.num_rollouts * args.steps_per_rollout
        else:
            self.num_rollouts = math.ceil(args.max_steps / args.steps_per_rollout)
        self.micro_steps_per_rollout = args.steps_per_rollout * args.gradient_accumulation_steps
        self.micro_steps_per_epoch = args.num_mini_batches * args.gradient_accumulation_steps
        self.stop_token_ids = self._stop_token_ids(args, tok, model)
        gen = dict(max_new_tokens=args.response_length, pad_token_id=tok.pad_token_id,
                   stop_token_ids=self.stop_token_ids)
        self.generation_config = rollout_generation_config(do_sample=True, temperature=args.temperature,
                                                           top_p=args.top_p, top_k=args.top_k, **gen)
        self.greedy_generation_config = rollout_generation_config(do_sample=False, **gen)
        self.ignored_generation_settings = log_ignored_generation_settings(model, self.generation_config)

        self._generation_attention: str | None = None  # attention used only while generating (see below)
        self._buffer: dict | None = None
        self._step: int | None = None
        self._rollouts_done = 0
        # per-step values keyed by mode, as TRL's trainers: averaged (over steps and processes) at each log
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._rollout_metrics: dict[str, float] = {}
        self.sample_generations: list[dict] = []
        super().__init__(model=wrapper, args=args, data_collator=identity, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tok, callbacks=callbacks, optimizers=optimizers)
        if self.ref_model is not None:
            self.ref_model = self._prepare_frozen(self.ref_model, self._frozen_dtype())
        for s in self.reward_sources:
            if hasattr(s, "model"):
                s.model = self._prepare_frozen(s.model, self._frozen_dtype())
        self._share_prompt_prefix = args.share_prompt_prefix and not self._weights_sharded_across_processes()
        for s in self.reward_sources:
            if hasattr(s, "model"):
                s.share_prompt_prefix = self._share_prompt_prefix
        if args.merge_adapter_for_generation:
            self._check_merge_for_generation(wrapper)
        self.vllm_engine = self._connect_vllm(wrapper) if args.use_vllm else None
        for m in (wrapper.policy, self.ref_model):  # the models whose LM head runs with logits_to_keep
            if m is not None:
                contiguous_lm_head_input(m)
        on_cpu = self.accelerator.device.type == "cpu"
        # whether the allocator keeps freed memory (cpu_keep_freed_memory); False when it was not asked or not glibc
        self.keeps_freed_memory = args.cpu_keep_freed_memory and on_cpu and keep_freed_memory_in_process()
        if args.bf16 and args.cpu_bf16_eager_attention and on_cpu:
            # every model alike, so that policy and reference (and rollout and training) compute the same way
            self.eager_attention_models = sum(use_eager_attention(m, args.cpu_bf16_padding_free)
                                              for m in self._all_models())
            # sampling is not matched bit for bit against anything, and SDPA decodes faster: generate with it
            self._generation_attention = "sdpa" if self.eager_attention_models else None

    def _connect_vllm(self, wrapper: PolicyAndValue):
        """The vLLM rollout engine (``use_vllm``): checked before any weights change. A LoRA policy's adapter is
        hot-loaded after each update; a full-weight policy is written whole and reloaded in place."""
        from .vllm_rollout import VLLMRolloutEngine

        if self.is_peft and not lora_layers_of(wrapper._layers, self.policy_adapter):
            raise ValueError("use_vllm=True with a PEFT policy needs LoRA layers in the policy adapter (vLLM loads "
                             "LoRA adapters only): pass peft_config=LoraConfig(...), or set use_vllm=False to "
                             "sample with model.generate.")
        if not self.is_peft and self._weights_sharded_across_processes():
            raise ValueError("use_vllm=True with a full-weight policy sharded across processes (FSDP or DeepSpeed "
                             "ZeRO-3) is not supported: the main process writes the whole policy for the server "
                             "after each update. Use ZeRO-2 or plain data parallelism, a LoRA policy "
                             "(peft_config=...), or use_vllm=False.")
        vocab = wrapper.policy.get_output_embeddings().weight.shape[0]
        return VLLMRolloutEngine(self.args, self.processing_class, vocab, self.accelerator.is_main_process)

    def _weights_sharded_across_processes(self) -> bool:
        """FSDP or DeepSpeed ZeRO-3: no process holds the whole policy."""
        return self.is_fsdp_enabled or (self.is_deepspeed_enabled and
                                        self.accelerator.state.deepspeed_plugin.zero_stage == 3)

    def _check_merge_for_generation(self, wrapper: PolicyAndValue) -> None:
        """``merge_adapter_for_generation`` needs LoRA layers of the policy adapter in full-precision, unsharded
        weights: refuse anything else before training starts."""
        fix = "Set merge_adapter_for_generation=False."
        if not self.is_peft:
            raise ValueError("merge_adapter_for_generation=True needs a PEFT LoRA policy (pass peft_config= or a "
                             f"PeftModel); this policy has no adapter to merge. {fix}")
        if is_quantized(wrapper.policy.get_base_model()):
            raise ValueError("merge_adapter_for_generation=True cannot merge the LoRA adapter into a 4-bit/8-bit "
                             f"quantized base exactly (QLoRA). {fix}")
        if self._weights_sharded_across_processes():
            raise ValueError("merge_adapter_for_generation=True cannot merge into weights sharded across processes "
                             f"(FSDP, DeepSpeed ZeRO-3). {fix}")
        if not lora_layers_of(wrapper._layers, self.policy_adapter):
            raise ValueError(f"merge_adapter_for_generation=True: the policy adapter {self.policy_adapter!r} has no "
                             f"LoRA layers (another PEFT method?). {fix}")

    def _prepare_frozen(self, model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
        """Reference and reward models: sharded/offloaded like the policy under DeepSpeed and FSDP (not a full
        copy per GPU), moved to the device otherwise (a 4-bit model is already placed)."""
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(model, self.accelerator)
        if not is_quantized(model):
            model.to(self.accelerator.device)
        if dtype is not None:
            hold_matmul_weights_in(model, dtype)
        return model

    def _frozen_dtype(self) -> torch.dtype | None:
        """The dtype frozen models hold their Linear weights in (``frozen_models_in_compute_dtype``), or ``None``."""
        args = self.args
        compute = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        return compute if args.frozen_models_in_compute_dtype else None

    def _all_models(self) -> list[nn.Module]:
        w = self._unwrapped()
        out = [w.policy, w.value_model.body(), self.ref_model]
        return [m for m in out + [s.model for s in self.reward_sources if hasattr(s, "model")] if m is not None]

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _validate_sizes(args: PPOConfig, dataset, world: int) -> None:
        prompts = args.local_batch_size * world // args.num_samples_per_prompt
        if hasattr(dataset, "__len__") and len(dataset) < prompts:
            raise ValueError(
                f"train_dataset has {len(dataset)} rows but one rollout needs {prompts} prompts "
                f"(per_device_train_batch_size × gradient_accumulation_steps × processes / "
                f"num_samples_per_prompt)."
            )

    @staticmethod
    def _stop_token_ids(args, tok, model) -> list[int]:
        if args.stop_token == "eos":
            return [tok.eos_token_id]
        if args.stop_token_id is not None:
            return [args.stop_token_id]
        eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
        eos = eos if eos is not None else tok.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])

    def _init_plugins(self, args: PPOConfig, plugins: list, ptx_dataset) -> None:
        given = {}
        self.hooks = []
        for p in plugins:
            kind = getattr(p, "kind", None)
            if kind == "hook" or (kind is None and any(hasattr(p, h) for h in HOOK_NAMES)):
                self.hooks.append(p)
            elif kind:
                if kind in given:
                    raise ValueError(f"Two {kind} plugins given: {given[kind]!r} and {p!r}.")
                given[kind] = p
            else:
                raise TypeError(f"Plugin {p!r} has no `kind`; subclass icegrt_trl.ppo.plugins.PPOPlugin or PPOHook.")
        self.reward_scaler = resolve_plugin("reward_scaling", given.get("reward_scaling", args.reward_scaling), args)
        self.kl_ctl = resolve_plugin("kl_controller", given.get("kl_controller", args.kl_controller), args)
        self.adv_norm = resolve_plugin("advantage_normalization",
                                       given.get("advantage_normalization", args.advantage_normalization), args)
        self.value_warmup = resolve_plugin("value_warmup", given.get("value_warmup", "steps"), args)
        self.ptx = None
        if args.ptx_coef > 0 or "ptx" in given:
            if ptx_dataset is None:
                raise ValueError("ptx_coef > 0 needs a `ptx_dataset`.")
            self.ptx = resolve_plugin("ptx", given.get("ptx", "nll"), args)

    @property
    def plugins(self) -> dict[str, Any]:
        out = {"reward_scaling": self.reward_scaler, "kl_controller": self.kl_ctl,
               "advantage_normalization": self.adv_norm, "value_warmup": self.value_warmup}
        if self.ptx is not None:
            out["ptx"] = self.ptx
        for i, h in enumerate(self.hooks):
            out[f"hook_{i}"] = h
        return out

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t

    # ------------------------------------------------------------------ data loading (one rollout per block)
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(self.train_dataset.column_names)

    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    @property
    def _prompts_per_rollout(self) -> int:
        return self.args.local_batch_size // self.args.num_samples_per_prompt

    def get_train_dataloader(self):
        return self._get_dataloader(dataset=self.train_dataset, description="Training",
                                    batch_size=self._prompts_per_rollout, sampler_fn=self._get_train_sampler,
                                    is_training=True)

    def _get_train_sampler(self, dataset=None):
        # Each block of prompts is repeated once per micro-step of the rollout built from it, so Trainer's step
        # counting, skipping on resume and epochs all work unchanged (as in TRL's RLOO/GRPO).
        return RepeatSampler(dataset if dataset is not None else self.train_dataset, mini_repeat_count=1,
                             batch_size=self._prompts_per_rollout * self.accelerator.num_processes,
                             repeat_count=self.micro_steps_per_rollout, shuffle=True, seed=self.args.seed)

    def create_optimizer(self, model=None):
        """Trainer's optimizer; with ``value_learning_rate`` the value parameters get their own group (Qwen)."""
        if self.args.value_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        w = self.model
        value_ids = {id(p) for p in w.value_model.parameters()}
        if w.value_model.adapter is not None:
            tag = f".{w.value_model.adapter}."
            value_ids |= {id(p) for n, p in w.policy.named_parameters() if tag in n}
        decay = set(self.get_decay_parameter_names(w))  # Trainer's split: no decay on biases and norms
        named = [(n, p) for n, p in w.named_parameters() if p.requires_grad]
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, w)
        kwargs.pop("lr", None)
        groups = []
        for is_value, lr in ((False, self.args.learning_rate), (True, self.args.value_learning_rate)):
            for decayed in (True, False):
                params = [p for n, p in named if (id(p) in value_ids) == is_value and (n in decay) == decayed]
                groups.append({"params": params, "lr": lr,
                               "weight_decay": self.args.weight_decay if decayed else 0.0})
        self.optimizer = cls([g for g in groups if g["params"]], **kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ rollout
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._step is None:  # fresh start or resume: position inside the current rollout
            self._step = self.state.global_step * self.args.gradient_accumulation_steps
        out = super().training_step(model, inputs, num_items_in_batch)
        self._step += 1
        if self._step % self.args.gradient_accumulation_steps == 0:
            self.value_warmup.step()
        if self._step % self.micro_steps_per_epoch == 0 and self._buffer is not None:
            self._buffer = run_hooks(self.hooks, "on_ppo_epoch_end", self._buffer, self)
        return out

    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return generation_batch
        k = self._step % self.micro_steps_per_rollout
        if k == 0 or self._buffer is None:
            if k != 0:
                warnings.warn("Resumed in the middle of a rollout without its saved buffer; generating a new one.")
            if k == 0 and self._reuses_first_training_forward():
                # the rollout is finished in compute_loss, from this micro-step's forward (see _ppo_loss)
                self._buffer = None
                pending = self._rollout(generation_batch, policy_forward=False)
                mb = {key: pending[key] for key in _SAMPLE_KEYS}
                mb.update(context_length=pending["context_length"], pending_rollout=pending)
                return mb
            self._buffer = self._rollout(generation_batch)
        epoch, j = divmod(k, self.micro_steps_per_epoch)
        b = self.args.local_micro_batch_size
        idx = self._buffer["perms"][epoch][j * b:(j + 1) * b]
        mb = {key: self._buffer[key][idx] for key in _TENSOR_KEYS}
        mb["context_length"] = self._buffer["context_length"]
        return mb

    def _reuses_first_training_forward(self) -> bool:
        """Whether this rollout's old log-probs and values come from its first training forward: one micro-batch
        holds the whole rollout, so that forward runs on every row before any optimizer step."""
        return (self.args.reuse_first_training_forward and self.micro_steps_per_epoch == 1
                and not self.value_warmup.active)

    def _prompt_prefix_length(self, ids: torch.Tensor, mask: torch.Tensor, context_length: int) -> int:
        """How many leading prompt tokens, the same in every row, a forward of these rows runs once
        (``share_prompt_prefix``); 0 when off, under reentrant activation checkpointing (the prefix would get no
        gradient), or with weights sharded across processes (a second forward per model would gather them twice).
        The rollout's forwards decide as the training forward does, so that step 0's KL stays exactly 0."""
        if not self._share_prompt_prefix or reentrant_checkpointing(self._unwrapped()):
            return 0
        return prefix_length_to_share(ids, mask, context_length)

    def _unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def _ref_scope(self):
        return adapter_scope(self._unwrapped().policy, self.args.ref_adapter_name)

    @contextlib.contextmanager
    def _gathered_for_generation(self):
        """Under DeepSpeed ZeRO-3, gather the sharded parameters once for the whole generation
        (``ds3_gather_for_generation``, as trl 1.12); elsewhere nothing to do."""
        from trl.distributed import DistributedBackend

        if not (self.is_deepspeed_enabled and DistributedBackend(self.accelerator).is_zero3
                and self.args.ds3_gather_for_generation):
            yield
            return
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        with deepspeed.zero.GatheredParameters(self.model_wrapped.parameters()):
            remove_hooks(self.model_wrapped)
            try:
                yield
            finally:
                add_hooks(self.model_wrapped)

    @torch.no_grad()
    def _generate(self, wrapper: PolicyAndValue, queries: torch.Tensor, query_mask: torch.Tensor,
                  greedy: bool = False, samples_per_prompt: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Responses ``[B, L]`` (right-padded; L = the longest response, at most ``response_length``) from the
        policy, with PPOConfig's sampling settings only (the model's own generation_config is set aside, see
        :mod:`icegrt_trl.ppo.generation`), and the engine's log-probs of them under ``use_vllm`` (else None). When
        every row stopped early, the rollout's forwards and training run on L columns, not ``response_length``
        (trl 1.12 kept generate's length too).

        With more rows than ``local_rollout_forward_batch_size`` the rows are generated in chunks of similar prompt
        length, each without the left padding all its rows share (less padding to attend over and to decode past)."""
        args, tok = self.args, self.processing_class
        if self.vllm_engine is not None:
            return self._generate_with_vllm(wrapper, queries, query_mask, greedy, samples_per_prompt)
        gen = self.greedy_generation_config if greedy else self.generation_config
        bs = args.local_rollout_forward_batch_size
        n = queries.shape[0]
        out = torch.full((n, args.response_length), tok.pad_token_id, dtype=queries.dtype, device=queries.device)
        longest = 1
        order = torch.argsort(query_mask.sum(1), descending=True, stable=True) if n > bs else \
            torch.arange(n, device=queries.device)
        merged = merged_adapter(wrapper._layers, self.policy_adapter) if args.merge_adapter_for_generation \
            else contextlib.nullcontext()
        with wrapper.policy_scope(), self._gathered_for_generation(), \
                attention_implementation(wrapper.policy, self._generation_attention), merged:
            for i in range(0, n, bs):
                idx = order[i:i + bs]
                width = int(query_mask[idx].sum(1).max())  # left padding: the last `width` columns hold every prompt
                q, m = queries[idx, -width:], query_mask[idx, -width:]
                resp = generate_rollouts(wrapper.policy, q, m, gen)[:, width:]
                out[idx, :resp.shape[1]] = resp
                longest = max(longest, resp.shape[1])
        return out[:, :longest], None

    def _generate_with_vllm(self, wrapper: PolicyAndValue, queries: torch.Tensor, query_mask: torch.Tensor,
                            greedy: bool, samples_per_prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``_generate`` on the vLLM server, from the policy as it is now (its adapter hot-loaded, or its full
        weights reloaded, when it changed).
        Each request carries a seed drawn from the trainer's generator, so a run (and a resumed one) is
        reproducible against the same server."""
        args, engine = self.args, self.vllm_engine
        engine.sync_policy(wrapper.policy, self.policy_adapter if self.is_peft else None, self.state.global_step,
                           barrier=self.accelerator.wait_for_everyone)
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        return engine.sample(queries, query_mask, samples_per_prompt, response_length=args.response_length,
                             temperature=0.0 if greedy else args.temperature, top_p=args.top_p, top_k=args.top_k,
                             stop_token_ids=self.stop_token_ids, pad_token_id=self.processing_class.pad_token_id,
                             seed=seed)

    @torch.no_grad()
    def _forward_logprobs_values(self, wrapper, qr, mask, context_length, responses, with_entropy: bool = True,
                                 policy: bool = True):
        """Old log-probs, reference log-probs, values and (``with_entropy``) token entropies of a rollout, in chunks
        of ``local_rollout_forward_batch_size`` rows. ``policy=False``: the reference log-probs alone, in one chunk
        (the shape of the training forward that will supply the rest, so that the step-0 KL is exactly 0).

        The old log-probs take a forward rather than the scores ``generate`` returns: the KV-cached decode
        computes them with other kernels and shapes, so they are not bit-equal to the training forward's and the
        first PPO ratio would not be exactly 1."""
        args = self.args
        lps, refs, vals, ents = [], [], [], []
        bs = args.local_rollout_forward_batch_size if policy else qr.shape[0]
        keep = responses.shape[1] + 1  # logits at positions context_length-1 … end-1 (responses are right-aligned)
        for i in range(0, qr.shape[0], bs):
            ids, m = qr[i:i + bs], mask[i:i + bs]
            pos = position_ids_from(m)
            # the training forward of these rows takes out the same prefix: bit-equal at step 0 (KL exactly 0)
            shared = self._prompt_prefix_length(ids, m, context_length)
            if policy:
                logits, values = wrapper(ids, m, pos, logits_to_keep=keep, prefix_length=shared)
                logits = logits[:, -keep:-1]
                lps.append(response_logprobs(logits, responses[i:i + bs], args.temperature))
                if with_entropy:
                    ents.append(response_entropies(logits, args.temperature))
                del logits
                vals.append(values[:, -keep:-1].float())
            split = split_shared_prefix(ids, m, shared) if shared else None
            if self.ref_model is not None:
                ref_logits = model_output(self.ref_model, ids, m, pos, split, keep).logits
            else:
                with self._ref_scope():
                    ref_logits = model_output(wrapper.policy, ids, m, pos, split, keep).logits
            refs.append(response_logprobs(ref_logits[:, -keep:-1], responses[i:i + bs], args.temperature))
            del ref_logits
        entropies = torch.cat(ents).float() if ents else None
        if not policy:
            return None, torch.cat(refs).float(), None, None
        return torch.cat(lps).float(), torch.cat(refs).float(), torch.cat(vals), entropies

    def _correct_for_the_engine(self, batch: dict, maskf: torch.Tensor) -> None:
        """vLLM sampled the batch: log how far its log-probs are from the trainer's old ones and, with
        ``vllm_importance_sampling_correction``, weight the advantages by π_trainer/π_engine (GRPO's correction;
        for the clipped surrogate, weighting the advantages of a token weights its loss)."""
        args, lp, elp = self.args, batch["logprobs"], batch["engine_logprobs"]
        weights = core.engine_importance_weights(lp, elp, maskf, args.vllm_importance_sampling_mode,
                                                 args.vllm_importance_sampling_clip_min,
                                                 args.vllm_importance_sampling_clip_max)
        gap = (lp - elp) * maskf
        n = maskf.sum().clamp(min=1)
        stats = {"vllm/logprob_diff_mean": gap.sum() / n, "vllm/logprob_absdiff_mean": gap.abs().sum() / n,
                 # KL(engine ‖ trainer) per token, from the engine's own samples (k3: ≥ 0 and low variance)
                 "vllm/kl": core.masked_mean(core.kl_estimate(elp, lp, "k3"), maskf),
                 "vllm/is_weight_mean": core.masked_mean(weights, maskf),
                 "vllm/is_weight_min": torch.where(maskf.bool(), weights, torch.inf).min(),
                 "vllm/is_weight_max": torch.where(maskf.bool(), weights, -torch.inf).max()}
        self._rollout_metrics.update({k: float(v) for k, v in stats.items()})
        if args.vllm_importance_sampling_correction:
            batch["advantages"] = batch["advantages"] * weights

    def _score(self, batch: dict, record: bool = False) -> torch.Tensor:
        """Weighted sum of the reward sources (``record``: log each source's mean as ``rewards/<name>/mean``)."""
        total = torch.zeros(len(batch["prompts"]), device=batch["scores_device"])
        for w, source in zip(self.reward_weights, self.reward_sources):
            s = source(batch)
            if record:
                self._rollout_metrics[f"rewards/{source.name}/mean"] = self._mean_all(s)
            total = total + w * s
        return total

    def _mean_all(self, t: torch.Tensor) -> float:
        return self._means_all({"x": t})["x"]

    def _means_all(self, named: dict[str, torch.Tensor]) -> dict[str, float]:
        """All-process means of several tensors, with one reduction and one device sync."""
        sums = torch.stack([torch.stack([t.detach().double().sum(), torch.tensor(
            float(t.numel()), dtype=torch.float64, device=t.device)]) for t in named.values()])
        sums = self._all_reduce_sum(sums)
        return dict(zip(named, (sums[:, 0] / sums[:, 1].clamp(min=1)).tolist()))

    def _sample_batch(self, rows: list[dict], greedy: bool = False, samples_per_prompt: int = 1) -> dict:
        """Generate responses to ``rows`` and describe them the way reward sources read them (one path for the
        rollout, ``evaluate`` and sample logs): left-padded queries, truncated responses, exact completion texts."""
        tok, device, wrapper = self.processing_class, self.accelerator.device, self._unwrapped()
        queries, qmask = left_pad([r["input_ids"] for r in rows], tok.pad_token_id)
        width = queries.shape[1]
        queries, qmask = queries.to(device), qmask.to(device)
        responses, engine_logprobs = self._generate(wrapper, queries, qmask, greedy=greedy,
                                                    samples_per_prompt=samples_per_prompt)
        responses, rmask, ended = core.truncate_at_stop(responses, self.stop_token_ids, tok.pad_token_id)
        completion_ids = [resp[: int(n)].tolist() for resp, n in zip(responses, rmask.sum(1))]
        texts = decode_completions(tok, [list(r["input_ids"]) for r in rows], completion_ids)
        prompts = [r["prompt"] for r in rows]
        conv = is_conversational_prompt(prompts[0])
        extra_cols = [c for c in rows[0] if c not in ("prompt", "input_ids")]
        return {
            "prompts": prompts, "prompt_texts": [p if isinstance(p, str) else tok.decode(r["input_ids"])
                                                 for p, r in zip(prompts, rows)],
            "completions_text": texts,
            "completions": [[{"role": "assistant", "content": t.strip()}] for t in texts] if conv else texts,
            "completion_ids": completion_ids,
            "columns": {c: [r[c] for r in rows] for c in extra_cols}, "trainer_state": self.state,
            "scores_device": device, "ended": ended, "context_length": width,
            "query_responses": torch.cat([queries, responses], 1),
            "query_response_mask": torch.cat([qmask, rmask], 1), "responses": responses, "response_mask": rmask,
            "engine_logprobs": None if engine_logprobs is None else engine_logprobs * rmask,
        }

    @torch.no_grad()
    def _rollout(self, rows: list[dict], policy_forward: bool = True) -> dict:
        """The rollout's buffer; ``policy_forward=False``: only its samples and reference log-probs, to be finished
        by :meth:`_finish_rollout` with the first training forward's log-probs and values."""
        # One autocast for every forward of the rollout (generation, policy, reference, value, reward) and of
        # training (compute_loss): with policy = reference the step-0 KL is then exactly 0 under bf16.
        wrapper = self._unwrapped()
        was_training = wrapper.training
        wrapper.eval()
        try:
            with self.accelerator.autocast():
                return self._rollout_in_eval(wrapper, rows, policy_forward)
        finally:
            wrapper.train(was_training)

    def _rollout_in_eval(self, wrapper: PolicyAndValue, rows: list[dict], policy_forward: bool = True) -> dict:
        k = self.args.num_samples_per_prompt
        batch = self._sample_batch([r for r in rows for _ in range(k)], samples_per_prompt=k)
        logprobs, ref_logprobs, values, entropies = self._forward_logprobs_values(
            wrapper, batch["query_responses"], batch["query_response_mask"], batch["context_length"],
            batch["responses"], with_entropy=self._will_log(self.state.global_step, self.args.steps_per_rollout),
            policy=policy_forward)
        batch["ref_logprobs"] = ref_logprobs
        if not policy_forward:
            return batch
        return self._finish_rollout(batch, logprobs, values, entropies)

    def _finish_pending_rollout(self, pending: dict, logprobs: torch.Tensor, values: torch.Tensor,
                                logits: torch.Tensor) -> dict:
        """Finish a rollout from the first training forward's (detached) log-probs and values, in the rollout's
        mode (eval, no gradients); the epoch-0 micro-batch is then every row in order."""
        wrapper = self._unwrapped()
        was_training = wrapper.training
        wrapper.eval()
        try:
            with torch.no_grad():
                entropies = response_entropies(logits, self.args.temperature).float() \
                    if self._will_log(self.state.global_step, self.args.steps_per_rollout) else None
                buffer = self._finish_rollout(pending, logprobs.detach().float(), values.detach().float(), entropies)
        finally:
            wrapper.train(was_training)
        buffer["perms"][0] = torch.arange(buffer["responses"].shape[0], device=buffer["responses"].device)
        return buffer

    def _finish_rollout(self, batch: dict, logprobs: torch.Tensor, values: torch.Tensor,
                        entropies: torch.Tensor | None) -> dict:
        """Scores, rewards, advantages, KL control, hooks and metrics of a sampled batch with its log-probs and
        values; returns the buffer the PPO epochs read."""
        args, tok, device = self.args, self.processing_class, self.accelerator.device
        k = args.num_samples_per_prompt
        rows = batch["prompts"]
        rmask = batch["response_mask"]
        maskf = rmask.float()
        batch.update(logprobs=logprobs * maskf, ref_logprobs=batch["ref_logprobs"] * maskf, values=values * maskf)
        batch = run_hooks(self.hooks, "on_rollout", batch, self)
        scores = self._score(batch, record=True)
        if args.missing_eos_penalty is not None:
            scores = torch.where(batch["ended"], scores, scores - args.missing_eos_penalty)
        batch["scores"] = scores
        batch = run_hooks(self.hooks, "on_scores", batch, self)
        scores = batch["scores"]
        rmask, maskf = batch["response_mask"], batch["response_mask"].float()
        batch["scaled_scores"] = self.reward_scaler(scores, self._all_reduce_sum)
        kl = core.kl_estimate(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator) * maskf
        beta = self.kl_ctl.value
        in_reward = args.kl_penalty == "reward"
        rewards, _ = core.token_level_rewards(batch["scaled_scores"], kl, maskf, beta if in_reward else 0.0)
        batch.update(rewards=rewards, kl=kl, non_score_rewards=-beta * kl, kl_coef=beta)
        batch = run_hooks(self.hooks, "on_rewards", batch, self)
        rewards = batch["rewards"]
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, maskf, shift_mean=False, all_reduce_sum=self._all_reduce_sum)
        estimate = core.lookup("advantage_estimator", args.advantage_estimator)
        adv, returns = estimate(rewards, batch["values"], maskf, gamma=args.gamma, lam=args.lam)
        adv = self.adv_norm(adv, maskf, group_size=k, all_reduce_sum=self._all_reduce_sum)
        batch.update(advantages=adv, returns=returns)
        batch = run_hooks(self.hooks, "on_advantages", batch, self)
        if batch.get("engine_logprobs") is not None:
            self._correct_for_the_engine(batch, maskf)

        # KL control on the all-process mean sequence KL, n = global batch size
        seq_kl = self._mean_all(batch["kl"].sum(1))
        self.kl_ctl.update(seq_kl, len(rows) * self.accelerator.num_processes)
        batch["kl_coef"] = self.kl_ctl.value
        batch = run_hooks(self.hooks, "on_kl_update", batch, self)

        n_rows = batch["responses"].shape[0]
        batch["perms"] = [torch.randperm(n_rows, device=device) for _ in range(args.num_ppo_epochs)]
        eos = tok.eos_token_id
        m = self._rollout_metrics
        m["objective/kl"] = seq_kl
        means = {"objective/entropy": (-batch["logprobs"] * maskf).sum(1),
                 "objective/non_score_reward": batch["non_score_rewards"].sum(1),
                 "objective/scores": scores, "objective/scaled_scores": batch["scaled_scores"],
                 "objective/response_length": maskf.sum(1),
                 "val/mean_value": core.masked_mean(batch["values"], maskf, dim=1)}
        m.pop("objective/token_entropy", None)  # no stale value when no step of this rollout logs
        if entropies is not None:
            means["objective/token_entropy"] = core.masked_mean(entropies, maskf, dim=1)
        m.update(self._means_all(means))  # one reduction and one device sync for all of them
        m["objective/rlhf_reward"] = m["objective/scores"] + m["objective/non_score_reward"]
        m["val/num_eos_tokens"] = self._all_reduce_sum((batch["responses"] == eos).sum().double()).item()
        m["val/explained_variance"] = core.explained_variance(batch["values"], batch["returns"], maskf,
                                                              self._all_reduce_sum).item()
        self._rollouts_done += 1
        m["episode"] = (self.state.global_step // self.args.steps_per_rollout + 1) * self.args.local_batch_size * \
            self.accelerator.num_processes
        self._maybe_sample_generations()
        keep = {key: batch[key] for key in _TENSOR_KEYS}
        keep.update(perms=batch["perms"], context_length=batch["context_length"])
        self._last_rollout = batch  # for inspection by hooks/tests; not checkpointed
        return keep

    # ------------------------------------------------------------------ losses
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.accelerator.autocast():  # the rollout's autocast (see _rollout), also for the ptx forward
            return self._ppo_loss(model, inputs)

    def _ppo_loss(self, model, inputs) -> torch.Tensor:
        args = self.args
        c = inputs["context_length"]
        mask = inputs["response_mask"].float()
        warm = self.value_warmup.active
        keep = inputs["responses"].shape[1] + 1
        qr, qr_mask = inputs["query_responses"], inputs["query_response_mask"]
        logits, values = model(qr, qr_mask, policy=not warm, logits_to_keep=keep,
                               prefix_length=self._prompt_prefix_length(qr, qr_mask, c))
        vpred = values[:, -keep:-1].float()  # read from the right: without a shared prefix, columns c-1 … end-1
        if not warm:
            logits = logits[:, -keep:-1]
            new_logprobs = response_logprobs(logits, inputs["responses"], args.temperature)
        if "pending_rollout" in inputs:  # the old log-probs and values are this forward's (reuse_first_training_forward)
            self._buffer = self._finish_pending_rollout(inputs["pending_rollout"], new_logprobs, vpred, logits)
            inputs = {key: self._buffer[key] for key in _TENSOR_KEYS}
        value_loss = core.lookup("value_loss", args.value_loss_type)
        vf_loss, vstats = value_loss(vpred, inputs["values"], inputs["returns"], mask,
                                     cliprange_value=args.cliprange_value)
        loss = args.vf_coef * vf_loss
        record = self._record
        record("loss/value_avg", vf_loss)
        record("val/clipfrac_avg", vstats["clipfrac"])
        if not warm:
            policy_loss = core.lookup("policy_loss", args.policy_loss_type)
            pg_loss, pstats = policy_loss(new_logprobs, inputs["logprobs"], inputs["advantages"], mask,
                                          cliprange=args.cliprange)
            loss = loss + pg_loss
            if args.kl_penalty == "loss":
                kl = core.kl_estimate(new_logprobs, inputs["ref_logprobs"], args.kl_estimator)
                kl_loss = core.masked_mean(kl, mask)
                loss = loss + self.kl_ctl.value * kl_loss
                record("loss/kl_avg", kl_loss)
            if self.ptx is not None:
                loss = loss + self.ptx.coef * self._ptx_loss(model)
            record("loss/policy_avg", pg_loss)
            record("policy/clipfrac_avg", pstats["clipfrac"])
            record("policy/approxkl_avg", pstats["approxkl"])
            record("val/ratio", pstats["ratio"])
            if self._will_log(self.state.global_step, 1):  # a full-vocabulary pass, for a metric only
                with torch.no_grad():
                    record("policy/entropy_avg", core.masked_mean(response_entropies(logits, args.temperature), mask))
        return loss

    def _record(self, key: str, value, mode: str = "train") -> None:
        """Keep a step metric as a tensor (no device sync per micro-batch); :meth:`log` reduces them."""
        self._metrics[mode][key].append(value.detach() if isinstance(value, torch.Tensor) else value)

    def _will_log(self, first_step: int, n_steps: int) -> bool:
        """Whether any optimizer step in ``first_step + 1 … first_step + n_steps`` logs (Trainer's rule): metrics
        that cost a full-vocabulary pass are computed for those steps only."""
        args = self.args
        if args.logging_strategy == "no":
            return False
        if args.logging_strategy != "steps":
            return True
        every = int(getattr(self.state, "logging_steps", 0) or 0) or max(1, int(args.logging_steps))
        last = self.state.max_steps  # Trainer logs the last step too
        return any(s % every == 0 or (s == 1 and args.logging_first_step) or s == last
                   for s in range(first_step + 1, first_step + n_steps + 1))

    # ptx: the fp32 cross-entropy is taken over chunks of positions, so that no fp32 copy of the full
    # [batch, length, vocabulary] logits exists at once (bf16 logits are kept for the backward anyway)
    _PTX_CHUNK = 128

    def _ptx_loss(self, model) -> torch.Tensor:
        b = self.ptx.next_batch(self.processing_class.pad_token_id, self.accelerator.device)
        wrapper = self._unwrapped()
        with wrapper.policy_scope():
            logits = wrapper.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                    use_cache=False).logits[:, :-1]
        labels = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
        nll = chunked_cross_entropy(logits, labels, self._PTX_CHUNK)
        self._record("loss/ptx_avg", nll)
        return nll

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log plus the mode's step metrics (``eval_``-prefixed in eval mode, as TRL's trainers); in train
        mode also the metrics of the rollout in use and the plugins' state."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        keys = sorted(metrics)
        if keys:
            dev = self.accelerator.device
            vals = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64).to(dev) for v in metrics[k]])
                                .mean() for k in keys])
            if self.accelerator.num_processes > 1:
                vals = self.accelerator.reduce(vals, reduction="mean")
            prefix = "" if mode == "train" else "eval_"
            logs.update({prefix + k: v for k, v in zip(keys, vals.tolist())})
        if mode == "train":
            logs.update(self._rollout_metrics)
            for p in (self.reward_scaler, self.kl_ctl, self.adv_norm, self.value_warmup):
                logs.update(p.metrics())
        metrics.clear()
        super().log(logs, start_time)

    def _maybe_sample_generations(self) -> None:
        n = self.args.num_sample_generations
        if n <= 0 or self.eval_dataset is None:
            return
        freq = max(1, self.num_rollouts // n)
        if (self._rollouts_done - 1) % freq:
            return
        rows = [self.eval_dataset[i] for i in range(min(4, len(self.eval_dataset)))]
        comps = self._greedy_rollout(rows)["completions_text"]
        sample = {"step": self.state.global_step, "prompts": [r["prompt"] for r in rows], "completions": comps}
        self.sample_generations.append(sample)
        if self.is_world_process_zero():  # a readable trail of what the policy writes, beside the checkpoints
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "sample_generations.jsonl"), "a") as f:
                f.write(json.dumps(sample, default=str) + "\n")

    @torch.no_grad()
    def _greedy_rollout(self, rows: list[dict]) -> dict:
        """Greedy responses to `rows` as a batch the reward sources read (token ids and decoded text)."""
        with self.accelerator.autocast():
            return self._sample_batch(rows, greedy=True)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean (weighted) reward of greedy completions on the eval prompts."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset.")
        if "input_ids" not in dataset.column_names:
            dataset = prepare_prompt_dataset(dataset, self.processing_class, None, name="eval_dataset")
        rows = [dataset[i] for i in range(len(dataset))]
        was = self.model.training
        # outside train(), the policy this call puts on the vLLM server is taken off again at the end
        release_engine = self.vllm_engine is not None and self.vllm_engine.loaded is None
        self.model.eval()
        try:
            batch = self._greedy_rollout(rows)
            with torch.no_grad(), self.accelerator.autocast():
                total = self._score(batch)
            score = self._mean_all(total)
            self._record("objective/scores", score, mode="eval")
            self._record("objective/response_length", self._mean_all(batch["response_mask"].sum(1).double()),
                         mode="eval")
            self.log({})
        finally:
            self.model.train(was)
            if release_engine:
                self.vllm_engine.release()
        return {f"{metric_key_prefix}_objective/scores": score}

    # ------------------------------------------------------------------ saving and resuming
    def plugin_state_dict(self) -> dict:
        return {name: p.state_dict() for name, p in self.plugins.items() if hasattr(p, "state_dict")}

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The checkpoint layout of :mod:`icegrt_trl.ppo.checkpoints`, plus tokenizer, args and model card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_policy_and_value(self._unwrapped(), output_dir, state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        write_ppo_state(output_dir, self.plugin_state_dict(), self.state.global_step, self._rollouts_done,
                        self._rollout_metrics)
        if self.is_world_process_zero():
            write_ppo_model_card(self, output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.save_merged_model and self.is_peft and self.args.should_save and not _internal_call:
            policy = self._unwrapped().policy
            if getattr(policy, "is_loaded_in_4bit", False) or getattr(policy.get_base_model(), "is_loaded_in_4bit",
                                                                      False):
                warnings.warn("save_merged_model is not supported on a quantized base; saved the adapters only.")
                return
            merged = copy.deepcopy(policy)
            for name in list(merged.peft_config):
                if name != self.policy_adapter:
                    merged.delete_adapter(name)
            merged.merge_and_unload().save_pretrained(os.path.join(output_dir or self.args.output_dir, "merged"))

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._buffer is not None and self._step % self.micro_steps_per_rollout != 0:
            # every process saves the half-used rollout it generated (its own prompts and samples)
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            save_rollout(self._buffer, folder, self.accelerator.process_index)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """``Trainer.train``; on resume the PPO state (plugins, rollout count, this process's half-used rollout) is
        restored here, a path every backend takes (under DeepSpeed Trainer never calls ``_load_from_checkpoint``)."""
        ckpt = resume_from_checkpoint
        if ckpt is True:
            from transformers.trainer_utils import get_last_checkpoint

            ckpt = get_last_checkpoint(self.args.output_dir) or True  # True: Trainer raises its own error
        if isinstance(ckpt, str):
            self._restore_ppo_state(ckpt)
        try:
            return super().train(resume_from_checkpoint=ckpt, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                                 **kwargs)
        finally:
            if self.vllm_engine is not None:
                self.vllm_engine.release()

    def _restore_ppo_state(self, ckpt: str) -> None:
        state = read_ppo_state(ckpt)
        if state is not None:
            self._rollout_metrics = dict(state.get("rollout_metrics", {}))  # metrics of the rollout in use
            self._rollouts_done = int(state.get("rollouts_done", 0))
            for name, p in self.plugins.items():
                if name in state["plugins"]:
                    p.load_state_dict(state["plugins"][name])
        self._step = None
        self._buffer = load_rollout(ckpt, self.accelerator.process_index, self.accelerator.device)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Model weights from our checkpoint layout (without DeepSpeed; its engine restores its own)."""
        load_policy_and_value(self._unwrapped(), resume_from_checkpoint, self.is_peft)

    def create_model_card(self, *args, **kwargs):  # ours is written by `_save`
        return None
