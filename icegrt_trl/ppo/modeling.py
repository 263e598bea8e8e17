"""Models of the PPO loop: value model (backbone + scalar head), policy+value wrapper, adapter switching.

Under PEFT one base hosts everything: the policy adapter, a second adapter for the value model (plus its head),
and the reference (adapters switched off). Adapters are switched by setting PEFT's per-layer active-adapter
attributes directly, which — unlike ``set_adapter``/``disable_adapter`` — leaves ``requires_grad`` alone, so both
adapters stay trainable by one optimizer. The switch covers LoRA layers *and* ``modules_to_save`` copies.

Activation checkpointing recomputes a layer's forward during backward, long after the adapter scope of that forward
has closed: :func:`adapter_aware_checkpointing` makes each checkpointed layer replay the adapter state it ran with.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import torch
from torch import nn

from .padding_free import padding_free_output
from .prefix import (PrefixSplit, forward_after_prefix, prefix_cache, reentrant_checkpointing_in_training,
                     split_shared_prefix)


def is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _tuner_layers(model) -> list:
    """Every module whose active adapter can be switched: LoRA-style tuner layers and the wrappers of
    ``modules_to_save`` / trainable tokens (both keep ``_active_adapter`` and ``_disable_adapters``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def _adapter_state(layers: list) -> list:
    return [(m._active_adapter, m._disable_adapters) for m in layers]


def _set_adapter_state(layers: list, state: list) -> None:
    for m, (active, disabled) in zip(layers, state):
        m._active_adapter, m._disable_adapters = active, disabled


@contextlib.contextmanager
def adapter_scope(model, adapter_name: str | None, layers: list | None = None):
    """Run with only ``adapter_name`` active (``None``: all adapters off, the base model), then restore."""
    layers = layers if layers is not None else _tuner_layers(model)
    saved = _adapter_state(layers)
    try:
        for m in layers:
            if adapter_name is None:
                m._disable_adapters = True
            else:
                m._active_adapter, m._disable_adapters = [adapter_name], False
        yield
    finally:
        _set_adapter_state(layers, saved)


def is_quantized(model) -> bool:
    """Whether ``model``'s weights are bitsandbytes 4-bit or 8-bit (they cannot be moved, cast or merged into)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def lora_layers_of(layers: list, adapter_name: str) -> list:
    """The LoRA layers among ``layers`` that hold ``adapter_name`` (not ``modules_to_save`` wrappers, nor layers the
    adapter does not touch)."""
    return [m for m in layers if adapter_name in getattr(m, "lora_A", {}) and hasattr(m, "merge")]


@contextlib.contextmanager
def merged_adapter(layers: list, adapter_name: str):
    """Fold ``adapter_name`` into its layers' base weights for the duration, then put the base's exact weights back.

    A merged layer is one matmul, where an unmerged LoRA layer adds two small matmuls, a scaling and an add per call:
    in a token-by-token decode that overhead is a large share of each step. PEFT's own ``unmerge`` subtracts the
    delta again, which in bf16 does not give back the same bits — and the base with adapters off is the reference
    model — so the base weights are copied before merging and copied back after (one copy of the adapted weights is
    held meanwhile). Inside the scope, layers that merged run their base layer only, whatever adapter is active."""
    saved = []
    try:
        for m in lora_layers_of(layers, adapter_name):
            if m.merged:
                raise RuntimeError(f"{type(m).__name__} already has merged adapters {m.merged_adapters}; "
                                   "merged_adapter expects unmerged layers")
            base = m.get_base_layer()
            saved.append((m, [(p, p.detach().clone()) for p in base.parameters(recurse=False)]))
            m.merge(adapter_names=[adapter_name])
        yield len(saved)
    finally:
        with torch.no_grad():
            for m, params in saved:
                for p, copy_ in params:
                    p.copy_(copy_)
                m.merged_adapters.clear()


def adapter_aware_checkpointing(model: nn.Module) -> int:
    """Make every checkpointed layer of ``model`` recompute with the adapter state of its original forward.

    transformers calls ``layer._gradient_checkpointing_func(forward, *args)``; the wrapper snapshots the layer's
    adapter switches at that call and re-applies them around every run of ``forward`` (the first one and the
    recomputation in backward), for reentrant and non-reentrant checkpointing alike. Without it the value adapter's
    layers are recomputed with the policy adapter active: wrong value gradients, or (reentrant) the value loss
    training the policy adapter. Returns the number of layers wrapped.
    """
    wrapped = 0
    for module in model.modules():
        fn = getattr(module, "_gradient_checkpointing_func", None)
        if fn is None or getattr(fn, "_icegrt_adapter_aware", False):
            continue
        layers = _tuner_layers(module)
        if not layers:
            continue
        module._gradient_checkpointing_func = _replaying(fn, layers)
        wrapped += 1
    return wrapped


def _replaying(checkpoint_fn, layers: list):
    def checkpoint_with_adapter_state(function, *args, **kwargs):
        state = _adapter_state(layers)

        def replay(*a, **k):
            current = _adapter_state(layers)
            _set_adapter_state(layers, state)
            try:
                return function(*a, **k)
            finally:
                _set_adapter_state(layers, current)

        return checkpoint_fn(replay, *args, **kwargs)

    checkpoint_with_adapter_state._icegrt_adapter_aware = True
    checkpoint_with_adapter_state.__wrapped__ = checkpoint_fn  # read by prefix.reentrant_checkpointing
    return checkpoint_with_adapter_state


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer body (no LM or classification head) of a causal LM or sequence classifier."""
    if is_peft_model(model):
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", "model")
    body = getattr(model, prefix, None)
    if body is None or body is model:
        raise ValueError(f"Cannot find the backbone of {type(model).__name__} (base_model_prefix={prefix!r}).")
    return body


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM's ``forward`` takes ``logits_to_keep`` (every transformers 5 decoder does; a custom
    model may not, and then gets full logits)."""
    import inspect

    from .generation import innermost_generator

    while isinstance(getattr(model, "module", None), nn.Module):  # DeepSpeed engine, DDP, FSDP1 wrappers
        model = model.module
    target = innermost_generator(model)
    try:
        return "logits_to_keep" in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


def logits_kwargs(model, logits_to_keep: int) -> dict:
    """``{"logits_to_keep": n}`` when ``n > 0`` and the model takes it, else ``{}``."""
    if logits_to_keep <= 0:
        return {}
    cached = getattr(model, "_icegrt_takes_logits_to_keep", None)
    if cached is None:
        cached = accepts_logits_to_keep(model)
        try:
            object.__setattr__(model, "_icegrt_takes_logits_to_keep", cached)
        except AttributeError:
            pass
    return {"logits_to_keep": logits_to_keep} if cached else {}


def contiguous_lm_head_input(model: nn.Module) -> bool:
    """Give ``model``'s LM head a contiguous input. Returns whether a hook was added (False: none needed or found).

    With ``logits_to_keep`` transformers feeds the head ``hidden[:, -k:]``, a strided view. PyTorch's matmul cannot
    fold such a 3-D input into one 2-D product, so on a CPU it expands the ``[vocabulary, hidden]`` weight to one
    copy per row and runs a batched product instead: for SmolLM2 (49k × 576) and 8 rows that is ~700 ms in bf16
    against 26 ms for the contiguous input, in every forward and in every ``generate`` prefill. A forward pre-hook
    copies the few kept positions instead (measured in docs/benchmarks.md)."""
    from .generation import innermost_generator

    target = innermost_generator(model)
    head = target.get_output_embeddings() if hasattr(target, "get_output_embeddings") else None
    if head is None or getattr(head, "_icegrt_contiguous_input", False):
        return False
    head.register_forward_pre_hook(_contiguous_first_input)
    head._icegrt_contiguous_input = True
    return True


def _contiguous_first_input(module, args):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def hold_matmul_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen fp32 weights and biases of ``model``'s ``nn.Linear`` layers in ``dtype``; embeddings, norms and
    a Linear tied to an embedding keep theirs.

    Under autocast to ``dtype`` a Linear rounds its fp32 weight to ``dtype`` on every call (autocast caches the cast
    only for weights that require grad); a weight stored already rounded gives the same bits without the cast, and
    embeddings, norms and the residual stream stay fp32 as before. The model must then run under that autocast.
    Returns how many layers were cast."""
    not_linear = {id(p) for m in model.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    cast = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if (not isinstance(m, nn.Linear) or not isinstance(w, torch.Tensor) or w.dtype != torch.float32
                or w.requires_grad or id(w) in not_linear):
            continue
        m.to(dtype)
        cast += 1
    return cast


def use_eager_attention(model: nn.Module, padding_free: bool = False) -> bool:
    """Switch a transformers model from SDPA to eager attention (see PPOConfig.cpu_bf16_eager_attention): for the
    decoders of :mod:`.grouped_attention`, its eager attention without key/value copies, and with ``padding_free``
    (``PPOConfig.cpu_bf16_padding_free``) the one under which :func:`model_output` packs the rows."""
    from .generation import innermost_generator
    from .grouped_attention import eager_implementation_for

    target = innermost_generator(model)
    config = getattr(target, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(target, "set_attn_implementation"):
        return False
    target.set_attn_implementation(eager_implementation_for(config, padding_free))
    return True


@contextlib.contextmanager
def attention_implementation(model: nn.Module, implementation: str | None):
    """Run with ``implementation`` as the model's attention (``None``: unchanged), then switch back."""
    from .generation import innermost_generator

    target = innermost_generator(model)
    previous = getattr(getattr(target, "config", None), "_attn_implementation", None)
    if implementation is None or previous in (None, implementation):
        yield
        return
    target.set_attn_implementation(implementation)
    try:
        yield
    finally:
        target.set_attn_implementation(previous)


def model_output(model: nn.Module, input_ids, attention_mask, position_ids, split: PrefixSplit | None = None,
                 logits_to_keep: int = 0, **kwargs):
    """A decoder's output (a causal LM or its body; no cache kept) on the inputs, or, with ``split`` (the same
    inputs, their shared prefix taken out), on each row's rest after the prefix run once, unless the model keeps no
    KV cache. Its outputs are read from the right either way (width W, or W - P). A model whose attention is
    :data:`.grouped_attention.PADDING_FREE` runs on the rows packed (:mod:`.padding_free`), same outputs."""
    if runs_padding_free(model):
        return padding_free_output(model, input_ids, attention_mask, position_ids, split, logits_to_keep,
                                   takes_logits_to_keep=bool(logits_kwargs(model, 1)), **kwargs)
    cache = prefix_cache(model, split, **logits_kwargs(model, 1)) if split is not None else None
    if cache is not None:
        return forward_after_prefix(model, split, cache, **logits_kwargs(model, logits_to_keep), **kwargs)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                 **logits_kwargs(model, logits_to_keep), **kwargs)


def runs_padding_free(model: nn.Module) -> bool:
    """Whether ``model`` (a decoder, its body, or a PeftModel) has the padding-free attention
    (``PPOConfig.cpu_bf16_padding_free``)."""
    from .generation import innermost_generator
    from .grouped_attention import PADDING_FREE

    config = getattr(innermost_generator(model), "config", None)
    return getattr(config, "_attn_implementation", None) == PADDING_FREE


def position_ids_from(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation uses them."""
    return (mask.cumsum(1) - 1).clamp(min=0)


class ValueModel(nn.Module):
    """Per-token values V(s_t) = head(h_t): a backbone plus a scalar head.

    ``adapter`` set: the backbone is shared with a PEFT policy and runs with that adapter active; the backbone is then
    kept out of this module's parameters (they belong to the policy) — only the head is registered.
    """

    shared = False  # True on SharedValueHead: the values come from the policy's own forward

    def __init__(self, backbone: nn.Module, head: nn.Module, adapter: str | None = None, peft_model=None):
        super().__init__()
        self.head, self.adapter = head, adapter
        if adapter is None:
            self.backbone = backbone
        else:
            object.__setattr__(self, "_shared_backbone", backbone)
            object.__setattr__(self, "_peft_model", peft_model)
            object.__setattr__(self, "_layers", _tuner_layers(peft_model))

    @classmethod
    def from_model(cls, model: nn.Module, init_std: float = 0.0) -> "ValueModel":
        """From a sequence classifier (its backbone and ``score`` head) or a causal LM (its backbone, new head)."""
        body = backbone_of(model)
        head = getattr(model, "score", None)
        if not isinstance(head, nn.Linear) or head.out_features != 1:
            head = new_value_head(model.config.get_text_config().hidden_size, init_std)
            head.to(next(model.parameters()).device)
        return cls(body, head)

    def body(self) -> nn.Module:
        return self.backbone if self.adapter is None else self._shared_backbone

    def forward(self, input_ids, attention_mask, position_ids=None, prefix: PrefixSplit | None = None):
        """Values ``[B, W]``; with ``prefix`` (inputs already split) the values of its rest, ``[B, W - P]``."""
        ctx = adapter_scope(self._peft_model, self.adapter, self._layers) if self.adapter else contextlib.nullcontext()
        with ctx:
            h = model_output(self.body(), input_ids, attention_mask, position_ids, prefix).last_hidden_state
        return self.values_from_hidden(h)

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-token values from the body's last hidden state."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


class SharedValueHead(ValueModel):
    """Values from the policy's own trunk: a scalar head on the policy's last hidden state (the setup of OpenAI's
    lm-human-preferences and trlx). One forward gives logits and values; the value loss also trains the policy's body
    (or its adapter). Called alone (``value(input_ids, attention_mask)``) it runs the policy's body itself."""

    shared = True

    def __init__(self, policy: nn.Module, head: nn.Module, policy_adapter: str | None = None):
        nn.Module.__init__(self)
        self.head, self.adapter = head, None
        object.__setattr__(self, "_policy", policy)  # not a submodule: the policy's weights belong to the policy
        object.__setattr__(self, "_policy_adapter", policy_adapter)

    def body(self) -> None:
        return None

    def forward(self, input_ids, attention_mask, position_ids=None, prefix: PrefixSplit | None = None):
        ctx = adapter_scope(self._policy, self._policy_adapter) if self._policy_adapter else contextlib.nullcontext()
        with ctx:
            h = model_output(backbone_of(self._policy), input_ids, attention_mask, position_ids,
                             prefix).last_hidden_state
        return self.values_from_hidden(h)


def new_value_head(hidden_size: int, init_std: float = 0.0) -> nn.Linear:
    head = nn.Linear(hidden_size, 1, bias=True)
    nn.init.normal_(head.weight, std=init_std) if init_std > 0 else nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class PolicyAndValue(nn.Module):
    """What Trainer optimizes and checkpoints: the policy and the value model in one module (one optimizer).

    ``forward`` returns ``(logits or None, values)``; ``policy=False`` skips the policy (value warm-up).
    """

    def __init__(self, policy: nn.Module, value_model: ValueModel, policy_adapter: str | None = None):
        super().__init__()
        self.policy, self.value_model, self.policy_adapter = policy, value_model, policy_adapter
        self.config = policy.config
        self._layers = _tuner_layers(policy) if policy_adapter else None

    @property
    def generation_config(self):
        return getattr(self.policy, "generation_config", None)

    def policy_scope(self):
        return adapter_scope(self.policy, self.policy_adapter, self._layers) if self.policy_adapter \
            else contextlib.nullcontext()

    def forward(self, input_ids, attention_mask, position_ids=None, policy: bool = True, logits_to_keep: int = 0,
                prefix_length: int = 0):
        """``(logits, values)``, both to be read from the right (their width is W, or W - prefix_length).

        ``logits_to_keep > 0``: the policy's LM head runs on the last that many positions only (the responses,
        right-aligned), not on every prompt position — with a 49k vocabulary the head and the log-softmax over its
        output are a large share of a forward. ``prefix_length > 0``: every row starts with those same real tokens
        (see :mod:`icegrt_trl.ppo.prefix`); each model runs them once and the rows' rest after them. Ignored under
        reentrant activation checkpointing in training (the prefix would get no gradient)."""
        position_ids = position_ids if position_ids is not None else position_ids_from(attention_mask)
        split = split_shared_prefix(input_ids, attention_mask, prefix_length) \
            if prefix_length > 0 and not reentrant_checkpointing_in_training(self) else None
        if self.value_model.shared:
            return self._shared_forward(input_ids, attention_mask, position_ids, policy, logits_to_keep, split)
        values = self.value_model(input_ids, attention_mask, position_ids, prefix=split)
        logits = None
        if policy:
            with self.policy_scope():
                logits = model_output(self.policy, input_ids, attention_mask, position_ids, split,
                                      logits_to_keep).logits
        return logits, values

    def _shared_forward(self, input_ids, attention_mask, position_ids, policy: bool, logits_to_keep: int,
                        split: PrefixSplit | None = None):
        """One policy forward for logits and values (``SharedValueHead``). The values read the last hidden state
        (post-norm in transformers' decoders); in value warm-up (``policy=False``) it is detached, so that only the
        head learns and the policy stays as it is."""
        with self.policy_scope():
            out = model_output(self.policy, input_ids, attention_mask, position_ids, split,
                               logits_to_keep if policy else 1, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        values = self.value_model.values_from_hidden(hidden if policy else hidden.detach())
        return (out.logits if policy else None), values

    def _checkpointing(self, enable: bool, **kwargs):
        done: list[nn.Module] = []
        for m in (self.policy, self.value_model.body()):
            if m is None:  # a value head on the policy's trunk has no body of its own
                continue
            base = m.get_base_model() if is_peft_model(m) else m
            if any(base is d or any(base is sub for sub in d.modules()) for d in done):
                continue  # the shared backbone of a PEFT value adapter is part of the policy: enabled once
            done.append(base)
            name = "activation_checkpointing" if hasattr(base, "activation_checkpointing_enable") \
                else "gradient_checkpointing"
            fn = getattr(base, f"{name}_{'enable' if enable else 'disable'}", None)
            if fn is not None:
                fn(**kwargs) if enable else fn()
            if enable and is_peft_model(m) and hasattr(base, "enable_input_require_grads"):
                base.enable_input_require_grads()
        if enable and is_peft_model(self.policy):  # after every enable: each one resets the checkpoint functions
            adapter_aware_checkpointing(self.policy.get_base_model())

    def activation_checkpointing_enable(self, **kwargs):
        self._checkpointing(True, **kwargs)

    def activation_checkpointing_disable(self):
        self._checkpointing(False)

    gradient_checkpointing_enable = activation_checkpointing_enable
    gradient_checkpointing_disable = activation_checkpointing_disable


def value_adapter_config(policy_config, peft_model):
    """The value adapter's PEFT config: the policy's, minus ``modules_to_save`` entries naming the output embeddings
    (the value model never reads the LM head; a trainable copy of it would get no gradient)."""
    cfg = copy.deepcopy(policy_config)
    if getattr(cfg, "modules_to_save", None):
        base = peft_model.get_base_model()
        out = base.get_output_embeddings()
        heads = {n.split(".")[-1] for n, m in base.named_modules()
                 if out is not None and (m is out or getattr(m, "original_module", None) is out)}
        kept = [name for name in cfg.modules_to_save if name not in heads]
        cfg.modules_to_save = kept or None
    return cfg


def make_reference(policy: nn.Module) -> nn.Module:
    """A frozen copy of the policy (only when there is no PEFT adapter to switch off)."""
    ref = copy.deepcopy(policy)
    ref.eval().requires_grad_(False)
    return ref


VALUE_ADAPTER = "value"


@dataclasses.dataclass
class PPOModels:
    """What :func:`assemble_models` builds: the trained wrapper and the frozen reference (``None`` under PEFT without a
    given reference: the policy with adapters off, or ``ref_adapter_name``)."""

    wrapper: PolicyAndValue
    ref_model: nn.Module | None
    is_peft: bool
    policy_adapter: str | None


def assemble_models(model: nn.Module, args, peft_config=None, value_model: nn.Module | None = None,
                    ref_model: nn.Module | None = None) -> PPOModels:
    """Policy, value model and reference as PPO trains them.

    * PEFT (``peft_config`` or a ``PeftModel``): one base hosts the policy adapter (``model_adapter_name``, default
      ``"default"``), a second adapter ``"value"`` (same LoRA config, no LM-head copy) with a scalar head, and the
      reference (adapters off, or ``ref_adapter_name``).
    * Full models: a copy of the policy's backbone with a new head as value model, a frozen copy as reference.
    * ``value_model``: its backbone and (if it has one) its one-output ``score`` head initialise the critic.
    """
    from trl.trainer.utils import disable_dropout_in_model

    is_peft = peft_config is not None or is_peft_model(model)
    policy_adapter = None
    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError("`model` is already a PeftModel; do not pass `peft_config` as well.")
        from peft import get_peft_model

        policy_adapter = args.model_adapter_name or "default"
        model = get_peft_model(model, peft_config, adapter_name=policy_adapter)
    elif is_peft:
        policy_adapter = args.model_adapter_name or model.active_adapter
    if is_peft and args.ref_adapter_name and args.ref_adapter_name not in model.peft_config:
        raise ValueError(f"ref_adapter_name={args.ref_adapter_name!r} is not an adapter of the model "
                         f"({list(model.peft_config)}).")
    device = next(model.parameters()).device
    hidden = model.config.get_text_config().hidden_size
    if getattr(args, "value_head_on_policy", False):
        if value_model is not None:
            raise ValueError("value_head_on_policy=True puts the value head on the policy's own trunk; do not pass a "
                             "`value_model` as well (or set value_head_on_policy=False to use it).")
        value = SharedValueHead(model, new_value_head(hidden, args.value_head_init_std).to(device), policy_adapter)
    elif value_model is not None:
        value = ValueModel.from_model(value_model, args.value_head_init_std)
    elif is_peft:
        model.add_adapter(VALUE_ADAPTER, value_adapter_config(model.peft_config[policy_adapter], model))
        head = new_value_head(hidden, args.value_head_init_std).to(device)
        value = ValueModel(backbone_of(model), head, adapter=VALUE_ADAPTER, peft_model=model)
    else:
        head = new_value_head(hidden, args.value_head_init_std).to(device)
        value = ValueModel(copy.deepcopy(backbone_of(model)), head)
    if is_peft:  # both adapters trainable (add_adapter/set_adapter toggled requires_grad)
        names = {policy_adapter} | ({VALUE_ADAPTER} if value.adapter == VALUE_ADAPTER else set())
        for n, p in model.named_parameters():
            if any(f".{a}." in n for a in names) and ("lora_" in n or "modules_to_save" in n):
                p.requires_grad_(True)
    if ref_model is None and not is_peft:
        ref_model = make_reference(model)
    if ref_model is not None:
        ref_model.eval().requires_grad_(False)
    for m in (model, value, ref_model):
        if m is not None:
            disable_dropout_in_model(m)
    return PPOModels(PolicyAndValue(model, value, policy_adapter), ref_model, is_peft, policy_adapter)
