"""GRM reward model: a causal LM that keeps its LM head, plus a reward head on the last hidden state.

Why keep the LM head: GRM (Yang et al. 2024) regularizes the shared hidden states with a text-generation loss
(SFT or DPO) computed through the LM head, which needs the head; a sequence-classification model has thrown it away.

The reward is read at the last non-pad token, located from the attention mask (not from ``pad_token_id``), and
position ids are derived from the mask, so a sequence gets the same reward with left padding, right padding or
none. The head type (``linear`` | ``mlp``) is stored in the config and checked when loading: GRM's own code can load
the wrong head silently when two loaders default differently, and we refuse to.

Load a saved model with one line::

    model = GRMRewardModel.from_pretrained("path/to/rm", head_type="mlp")   # head_type optional, checked if given
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ..cards import update_card_section

HEAD_TYPES = ("linear", "mlp")


class HeadTypeMismatchError(ValueError):
    """The checkpoint's reward head is not the one asked for (or its weights do not fit the declared head)."""


class GRMConfig(PretrainedConfig):
    """Config of `GRMRewardModel`.

    Args:
        lm_config: config (or dict) of the wrapped causal LM.
        head_type: ``"mlp"`` (Linear(d, head_hidden_size) → ReLU → Linear(·, 1), GRM's default) or ``"linear"``.
        head_hidden_size: width of the MLP head's hidden layer (GRM: 1024).
        head_dropout: dropout on the pooled hidden state before the head (GRM: 0.1; note that
            `RewardConfig.disable_dropout=True`, TRL's default, switches it off during training).
    """

    model_type = "grm_reward"
    sub_configs = {"lm_config": AutoConfig}

    def __init__(self, lm_config=None, head_type: str = "mlp", head_hidden_size: int = 1024,
                 head_dropout: float = 0.1, **kwargs):
        if isinstance(lm_config, dict):
            lm_config = AutoConfig.for_model(**lm_config)
        if head_type not in HEAD_TYPES:
            raise ValueError(f"GRM head_type={head_type!r} is not one of {HEAD_TYPES}.")
        self.lm_config = lm_config
        self.head_type = head_type
        self.head_hidden_size = head_hidden_size
        self.head_dropout = head_dropout
        kwargs["num_labels"] = 1
        if lm_config is not None:
            for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
                kwargs.setdefault(key, getattr(lm_config, key, None))
        attn = getattr(lm_config, "_attn_implementation", None)
        super().__init__(**kwargs)
        if attn is not None:  # PretrainedConfig.__init__ resets sub-configs' attention choice; keep the live LM's
            lm_config._attn_implementation = attn

    @property
    def hidden_size(self) -> int:
        return self.lm_config.hidden_size


class RewardHead(nn.Module):
    """Dropout → ``linear`` or ``mlp`` head mapping a hidden state (…, d) to a reward (…, 1)."""

    def __init__(self, hidden_size: int, head_type: str = "mlp", head_hidden_size: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.head_type = head_type
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        if head_type == "linear":
            self.summary = nn.Linear(hidden_size, 1)
        elif head_type == "mlp":
            self.summary = nn.Sequential(nn.Linear(hidden_size, head_hidden_size), nn.ReLU(),
                                         nn.Linear(head_hidden_size, 1))
        else:
            raise ValueError(f"GRM head_type={head_type!r} is not one of {HEAD_TYPES}.")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = next(self.summary.parameters())
        return self.summary(self.dropout(hidden.to(weight.dtype)))


@dataclass
class GRMOutput(ModelOutput):
    """``logits``: rewards (B, 1), the same shape as a sequence classifier with one label, so a GRM model plugs in
    wherever a reward model is expected. ``lm_logits`` (B, L, V) only when asked (``return_lm_logits=True``);
    ``last_hidden_state`` (B, L, d) always (plugins such as RLP's UML read it)."""

    logits: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple | None = None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask: works with left padding, right padding and none."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(-1)


class GRMRewardModel(PreTrainedModel):
    """Causal LM (LM head kept) + reward head; `forward(input_ids, attention_mask).logits` is the (B, 1) reward."""

    config_class = GRMConfig
    base_model_prefix = "grm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: GRMConfig, lm: PreTrainedModel | None = None):
        attn = getattr(lm.config, "_attn_implementation", None) if lm is not None else None
        super().__init__(config)
        if attn is not None:  # PreTrainedModel.__init__ resets the shared sub-config's attention choice to None
            lm.config._attn_implementation = attn
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(config.lm_config)
        self.score = RewardHead(config.lm_config.hidden_size, config.head_type, config.head_hidden_size,
                                config.head_dropout)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear) and any(module is m for m in self.score.modules()):
            module.reset_parameters()

    @classmethod
    def from_causal_lm(cls, lm: PreTrainedModel, head_type: str = "mlp", head_hidden_size: int = 1024,
                       head_dropout: float = 0.1) -> "GRMRewardModel":
        """Wrap an existing causal LM (e.g. the SFT policy, possibly 4-bit) without copying or re-initialising it."""
        if lm.get_output_embeddings() is None:
            raise ValueError(f"{type(lm).__name__} has no LM head; GRM needs a causal LM (AutoModelForCausalLM).")
        for module in lm.modules():  # keep the LM's weights: post_init only initialises the new head
            module._is_hf_initialized = True
        config = GRMConfig(lm_config=lm.config, head_type=head_type, head_hidden_size=head_hidden_size,
                           head_dropout=head_dropout)
        model = cls(config, lm=lm)
        for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "hf_quantizer", "quantization_method"):
            if getattr(lm, attr, None) is not None:
                setattr(model, attr, getattr(lm, attr))
        head_param = next(model.score.parameters())
        lm_param = next(lm.parameters())
        model.score.to(device=lm_param.device,
                       dtype=lm_param.dtype if lm_param.is_floating_point() and lm_param.dtype != torch.uint8
                       else head_param.dtype)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, head_type: str | None = None, **kwargs):
        """Load a saved GRM reward model; if `head_type` is given it must match the saved one (else an error).

        Also fails loudly when the stored head weights do not fit the declared head (missing/unexpected keys).
        """
        config = kwargs.get("config")
        if config is None:
            config_dict, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path)
            if config_dict.get("model_type") != GRMConfig.model_type:
                raise HeadTypeMismatchError(
                    f"{pretrained_model_name_or_path} is not a GRM reward model checkpoint (model_type="
                    f"{config_dict.get('model_type')!r}, expected 'grm_reward'). Wrap a causal LM with "
                    "GRMRewardModel.from_causal_lm(...) to build one.")
            config = GRMConfig.from_dict(config_dict)
            kwargs["config"] = config
        if head_type is not None and head_type != config.head_type:
            raise HeadTypeMismatchError(
                f"Reward head type mismatch: {pretrained_model_name_or_path} was saved with head_type="
                f"{config.head_type!r}, but head_type={head_type!r} was requested.")
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)
        bad = sorted(k for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
                     for k in (info.get(key) or []) if "score" in str(k))
        if bad:
            raise HeadTypeMismatchError(
                f"The reward head weights in {pretrained_model_name_or_path} do not fit head_type="
                f"{config.head_type!r}: {bad}. The checkpoint's config and weights disagree.")
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            update_card_section(save_directory, "reward-head", self.model_card_section())

    def model_card_section(self) -> str:
        c = self.config
        head = ("Linear(d, 1)" if c.head_type == "linear"
                else f"Linear(d, {c.head_hidden_size}) → ReLU → Linear({c.head_hidden_size}, 1)")
        return (
            "## Reward head (GRM)\n\n"
            f"- head type: **{c.head_type}** ({head}), dropout {c.head_dropout}, on the last layer's hidden state at "
            f"the last non-pad token; base LM: `{c.lm_config.model_type}` (LM head kept).\n"
            "- load: `from icegrt_trl import GRMRewardModel; "
            f"rm = GRMRewardModel.from_pretrained(path, head_type=\"{c.head_type}\")`\n"
        )

    # --- plumbing so PEFT, TRL and generation helpers see the LM --------------------------------------------------
    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_lm_logits: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> GRMOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:  # from the mask, so left padding does not shift positions
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs.pop("labels", None)
        out = self.lm.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden = out.last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        rewards = self.score(pooled)
        lm_logits = self.lm.get_output_embeddings()(hidden) if return_lm_logits else None
        return GRMOutput(logits=rewards, lm_logits=lm_logits, last_hidden_state=hidden,
                         hidden_states=getattr(out, "hidden_states", None))


AutoConfig.register(GRMConfig.model_type, GRMConfig, exist_ok=True)
AutoModelForSequenceClassification.register(GRMConfig, GRMRewardModel, exist_ok=True)

__all__ = ["GRMConfig", "GRMOutput", "GRMRewardModel", "HEAD_TYPES", "HeadTypeMismatchError", "RewardHead",
           "last_token_index"]
