"""bitsandbytes 4-bit layers in a model that trains on a CPU (QLoRA): keep their backward."""

from __future__ import annotations

from torch import nn


def keep_4bit_layers_differentiable(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking the 4-bit weights of a model that is trained (QLoRA) for CPU inference.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` rewrites its weight into a packed inference layout the
    first time it runs in eval mode without grad, and from then on computes every CPU forward with ``gemv_4bit``,
    which has no backward: no gradient reaches the layers below it, silently. PPO samples and scores rollouts in
    eval mode with the same base it then trains, and a reward model is often evaluated before it trains: the LoRA
    adapters then got only the gradients that bypass every 4-bit matmul. Each 4-bit layer is told not to repack. A
    layer that is already repacked is refused: bitsandbytes' way back is lossy (0.2-35 % of the weight's norm
    measured). Returns the number of 4-bit layers seen."""
    layers = [(name, m) for name, m in model.named_modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    packed = [name for name, m in layers
              if getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)]
    if packed:
        raise ValueError(
            f"{len(packed)} 4-bit layers of the model to train (first: {packed[0]}) were repacked by bitsandbytes "
            "for CPU inference, which it does on a CPU with AVX512-BF16 the first time a Linear4bit runs in eval "
            "mode without grad; a repacked layer has no backward, so its LoRA adapters would get wrong gradients. "
            "Load the 4-bit model again and pass it to the trainer before running it in eval mode (the trainer then "
            "keeps it trainable), or set each Linear4bit's support_avx512bf16_for_cpu = False before such a forward.")
    for _, m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)
