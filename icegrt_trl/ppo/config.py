"""PPOConfig: trl 1.12's PPOConfig fields (same names, meanings, defaults) plus the ICE-GRT/Qwen knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl.trainer.base_config import _BaseConfig


@dataclass
class PPOConfig(_BaseConfig):
    r"""
    Configuration of [`PPOTrainer`]. Extends [`~transformers.TrainingArguments`] (through TRL's base config, so
    `logging_steps=10`, `gradient_checkpointing=True`, `bf16=True` unless `fp16`, `learning_rate=3e-6` as in trl 1.12).

    Sizes (per process; ``docs/migrating.md`` has the table measured against trl 1.12):

    - a *rollout* is ``per_device_train_batch_size × gradient_accumulation_steps`` sequences (``local_batch_size``),
      i.e. that many / ``num_samples_per_prompt`` prompts, generated at once — as in trl 1.12;
    - each pass over it (``num_ppo_epochs`` passes) is split into ``num_mini_batches`` mini-batches, one optimizer
      step each (``local_mini_batch_size`` = rollout / ``num_mini_batches`` sequences);
    - Trainer accumulates every step over ``gradient_accumulation_steps`` micro-batches (the field keeps Trainer's
      meaning), so a micro-batch is ``per_device_train_batch_size / num_mini_batches`` sequences
      (``local_micro_batch_size``), which must be whole.

    This is trl 1.12's behaviour wherever it was coherent: with ``num_mini_batches=1`` (micro-batches of
    ``per_device_train_batch_size``, ``gradient_accumulation_steps`` of them per step) and with
    ``gradient_accumulation_steps=1`` (each step one micro-batch of ``per_device / num_mini_batches``). With both > 1
    trl 1.12 accumulated ``gradient_accumulation_steps`` micro-batches across mini-batch boundaries, so
    ``num_mini_batches`` did not set the number of steps; here it does. Trainer's ``global_step`` counts optimizer
    steps: ``num_ppo_epochs × num_mini_batches`` per rollout. No field you pass is rewritten.

    Parameters kept from trl 1.12 (`trl.experimental.ppo.PPOConfig`):
        dataset_num_proc (`int`, *optional*): processes for tokenizing the dataset.
        num_mini_batches (`int`, defaults to `1`): mini-batches (optimizer steps) per pass over a rollout.
        total_episodes (`int`, *optional*): total sequences to generate; `None` → ``num_train_epochs ×
            len(train_dataset) × num_samples_per_prompt``. Sets ``max_steps`` when ``max_steps`` is not given.
        local_rollout_forward_batch_size (`int`, defaults to `64`): rows per no-grad forward/generation chunk.
        num_sample_generations (`int`, defaults to `10`): how many times to log sample completions of `eval_dataset`
            during training (0 disables).
        response_length (`int`, defaults to `53`): maximum new tokens per response.
        stop_token (`"eos"` or `None`): stop (and truncate) at the tokenizer's EOS. Exclusive with `stop_token_id`.
        stop_token_id (`int`, *optional*): stop (and truncate) at this token id. Without either, generation stops at
            the model's `generation_config.eos_token_id`.
        temperature (`float`, defaults to `0.7`): sampling temperature; log-probabilities use the same temperature.
        missing_eos_penalty (`float`, *optional*): subtracted from the score of responses without a stop token.
        kl_coef (`float`, defaults to `0.05`): initial β of the KL penalty.
        kl_estimator (`"k1"`, `"k2"` or `"k3"`, defaults to `"k1"`): KL estimator (Schulman, "Approximating KL
            Divergence"); any name registered with `icegrt_trl.ppo.core.register_kl_estimator`.
        cliprange (`float`, defaults to `0.2`): PPO policy ratio clip ε.
        vf_coef (`float`, defaults to `0.1`): weight of the value loss.
        cliprange_value (`float`, defaults to `0.2`): value clip around the rollout values (Qwen: 0.15).
        gamma (`float`, defaults to `1.0`): discount. lam (`float`, defaults to `0.95`): GAE λ.
        whiten_rewards (`bool`, defaults to `False`): whiten token rewards (scale only) before GAE, all processes.
        model_adapter_name (`str`, *optional*): the trained PEFT adapter when the model holds several.
        ref_adapter_name (`str`, *optional*): a PEFT adapter to use as reference (default: adapters disabled).

    Parameters added by icegrt-trl:
        num_samples_per_prompt (`int`, defaults to `1`): responses sampled per prompt (Qwen: 2); the samples of one
            prompt stay on one process (needed by `advantage_normalization="group"`).
        top_p (`float`, defaults to `1.0`): nucleus sampling (Qwen: 0.9). top_k (`int`, defaults to `0` = off).
        max_prompt_length (`int`, *optional*): longer prompts are truncated from the left (counted in a warning);
            `None` → model's ``max_position_embeddings − response_length`` when known.
        reward_weights (`list[float]`, *optional*): weights of the reward sources when `reward_model` is a list
            (default: all 1).
        reward_scaling (`str`, defaults to `"none"`): `"none"`, `"running_meanstd"` (Qwen's running-mean
            normalization), `"running_std"`, `"fixed"` (× `reward_scale`) or a registered plugin name.
        reward_scale (`float`, defaults to `1.0`): factor of `reward_scaling="fixed"`.
        reward_clip (`float`, *optional*): clip scaled scores to ±reward_clip (ICE-GRT-style reward scaling).
        kl_controller (`str`, defaults to `"fixed"`): `"fixed"` or `"adaptive"` (Ziegler et al. 2019).
        kl_target (`float`, defaults to `6.0`), kl_horizon (`int`, defaults to `10000`): adaptive controller's
            target sequence KL and horizon (old TRL defaults).
        kl_penalty (`"reward"` or `"loss"`, defaults to `"reward"`): put −β·KL into the token rewards (classic PPO-RLHF)
            or add β·KL(π‖π_ref) to the policy loss (GRPO-style, uses `kl_estimator` on the new log-probs).
        advantage_normalization (`str`, defaults to `"whiten"`): `"whiten"` (over all processes), `"none"`, `"group"`
            (within the samples of one prompt).
        value_warmup_steps (`int`, defaults to `0`): first optimizer steps that train the value model only (Qwen: 50).
        value_learning_rate (`float`, *optional*): separate learning rate for the value model (Qwen: policy 1e-6,
            value 5e-6); default `learning_rate`.
        ptx_coef (`float`, defaults to `0.0`): weight of the next-token loss on `ptx_dataset` added to policy updates.
        ptx_batch_size (`int`, *optional*): rows of `ptx_dataset` per micro-batch (default `local_micro_batch_size`,
            i.e. per_device_train_batch_size / num_mini_batches).
        value_head_init_std (`float`, defaults to `0.0`): std of the new value head's weights (0 → starts at V = 0).
        save_merged_model (`bool`, defaults to `False`): under PEFT, `save_model` also writes the merged policy to
            `output_dir/merged` (not for quantized bases).
        recipe (`str`, *optional*): name of the recipe that produced the run, written to the model card.
    """

    # ---------------------------------------------------------------- optimization
    learning_rate: float = field(default=3e-6, metadata={
        "help": "AdamW learning rate of the policy (trl 1.12's default 3e-6; Qwen: 1e-6 for 7B+ models). The value "
                "model uses value_learning_rate when set."})
    value_learning_rate: float | None = field(default=None, metadata={
        "help": "Own learning rate for the value model / value adapter / value head (Qwen §3.2: 5e-6 next to a "
                "policy lr of 1e-6). Default: learning_rate. Trainer's weight-decay split and weight_decay apply."})
    value_warmup_steps: int = field(default=0, metadata={
        "help": "First N optimizer steps train only the value model, the policy frozen (Qwen §3.2: 50), so that the "
                "first policy updates see a fitted critic. Counts optimizer steps (num_ppo_epochs × "
                "num_mini_batches per rollout)."})
    vf_coef: float = field(default=0.1, metadata={
        "help": "Weight of the value loss in the total loss (trl 1.12's default)."})
    value_head_on_policy: bool = field(default=False, metadata={
        "help": "Put the value head on the policy's own last hidden state (one forward for logits and values, as in "
                "OpenAI's lm-human-preferences and trlx) instead of a separate value model. Saves the value model's "
                "forwards and, without PEFT, its weights and optimizer state; the value loss (times vf_coef) then "
                "also trains the policy's body. See docs/benchmarks.md for what it cost in learning."})
    value_head_init_std: float = field(default=0.0, metadata={
        "help": "Std of the new value head's weights; 0 (default) starts every value at 0, so the first value step "
                "moves only the head. Ignored when value_model= has a one-output `score` head."})
    # ---------------------------------------------------------------- rollout size and reuse (see the class docstring)
    num_mini_batches: int = field(default=1, metadata={
        "help": "Optimizer steps per pass over a rollout (of per_device_train_batch_size × "
                "gradient_accumulation_steps sequences per process, as in trl 1.12). Each step accumulates "
                "gradient_accumulation_steps micro-batches of per_device_train_batch_size / num_mini_batches "
                "sequences, so it must divide per_device_train_batch_size."})
    num_ppo_epochs: int = field(default=4, metadata={
        "help": "Passes over each rollout before generating the next (trl 1.12's default 4). More passes reuse "
                "samples more but drift further off-policy: watch policy/clipfrac_avg and policy/approxkl_avg."})
    total_episodes: int | None = field(default=None, metadata={
        "help": "Sequences to generate in the whole run (trl 1.12's name). Default: num_train_epochs × prompts × "
                "num_samples_per_prompt. Sets max_steps = ceil(total_episodes / global rollout size) × num_ppo_epochs "
                "× num_mini_batches unless max_steps is given."})
    num_samples_per_prompt: int = field(default=1, metadata={
        "help": "Responses sampled per prompt in a rollout (Qwen: 2). The samples of one prompt stay on one process "
                "and in one rollout, so it must divide per_device_train_batch_size × gradient_accumulation_steps. "
                "Needed (≥ 2) by advantage_normalization='group'."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={
        "help": "Rows per chunk of the no-grad work of a rollout (generation, old/reference log-probs, values, reward "
                "scores); lower it if the rollout runs out of memory. Does not change results. When the rollout reuses the first "
                "training forward (reuse_first_training_forward), the reference forward runs on all its rows at once, "
                "the shape of that training forward."})
    # ---------------------------------------------------------------- sampling (the only settings the rollout uses)
    response_length: int = field(default=53, metadata={
        "help": "Maximum new tokens per response (trl 1.12's default 53). Responses stop earlier at the stop token."})
    temperature: float = field(default=0.7, metadata={
        "help": "Sampling temperature; the log-probabilities PPO optimizes use the same temperature (trl 1.12's "
                "default 0.7). The model's own generation_config is ignored (a warning names what it sets)."})
    top_p: float = field(default=1.0, metadata={
        "help": "Nucleus sampling (Qwen: 0.9); 1.0 = off. Truncates sampling only; log-probabilities are not "
                "renormalized (as in trl 1.12)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 = off. Truncates sampling only, like top_p."})
    stop_token: Literal["eos"] | None = field(default=None, metadata={
        "help": "'eos': responses end at the tokenizer's EOS (included, then padding). Exclusive with "
                "stop_token_id. Without either, the model's generation_config.eos_token_id is the stop token."})
    stop_token_id: int | None = field(default=None, metadata={
        "help": "A token id that ends responses (e.g. <|im_end|>); exclusive with stop_token."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Longer prompts are truncated from the left, with a warning that counts them. Default: the model's "
                "max_position_embeddings − response_length."})
    # ---------------------------------------------------------------- reward
    reward_weights: list[float] | None = field(default=None, metadata={
        "help": "Weight of each reward source when reward_model is a list (default: all 1); one per source."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the score of responses that end without the stop token (positive; trl 1.12). "
                "Discourages rambling to response_length."})
    reward_scaling: str = field(default="none", metadata={
        "help": "How raw scores become the scores PPO optimizes: 'none'; 'running_meanstd' (Qwen's running-mean "
                "normalization: (s − mean)/std over all scores so far); 'running_std' (s/std, keeps sign and offset); "
                "'fixed' (s × reward_scale). Running statistics are all-reduced over processes, the std is floored "
                "at 0.01, and they are saved in checkpoints. Any registered 'reward_scaling' plugin name."})
    reward_scale: float = field(default=1.0, metadata={
        "help": "Factor of reward_scaling='fixed' (ICE-GRT-style reward size scaling)."})
    reward_clip: float | None = field(default=None, metadata={
        "help": "Clip scaled scores to ±reward_clip (after reward_scaling); e.g. 5 with running_meanstd."})
    whiten_rewards: bool = field(default=False, metadata={
        "help": "Scale the token rewards to unit variance (mean kept) before GAE, over all processes (trl 1.12)."})
    # ---------------------------------------------------------------- KL regularization
    kl_coef: float = field(default=0.05, metadata={
        "help": "β of the KL penalty (trl 1.12's default; Qwen: 0.04). The start value when kl_controller="
                "'adaptive'."})
    kl_penalty: Literal["reward", "loss"] = field(default="reward", metadata={
        "help": "'reward': −β·KL per token in the rewards (classic PPO-RLHF, Ziegler et al. 2019); 'loss': β·KL "
                "added to the policy loss (GRPO-style), with kl_estimator k3 by default."})
    kl_estimator: str | None = field(default=None, metadata={
        "help": "KL estimator (Schulman, 'Approximating KL Divergence'): k1 = log π − log π_ref, k2 = ½(log r)², "
                "k3 = (r − 1) − log r. Default: k1 with kl_penalty='reward' (trl 1.12's default), k3 with "
                "kl_penalty='loss' (k1's gradient has expectation 0 as a loss, so it does not regularize; refused)."})
    kl_controller: str = field(default="fixed", metadata={
        "help": "'fixed' β, or 'adaptive' (Ziegler et al. 2019; ICE-GRT's KL control): β moves to keep the mean "
                "sequence KL near kl_target. Helped most against a learned reward model here (docs/ppo.md)."})
    kl_target: float = field(default=6.0, metadata={
        "help": "Adaptive controller: target mean sequence KL in nats (old TRL default 6.0; short responses need "
                "less, e.g. 0.5 on the testbed)."})
    kl_horizon: int = field(default=10000, metadata={
        "help": "Adaptive controller: horizon in sequences; β changes by at most a factor 1 ± 0.2·n/horizon per rollout of n sequences."})
    # ---------------------------------------------------------------- advantages and losses
    advantage_estimator: str = field(default="gae", metadata={
        "help": "How advantages and returns are computed from the token rewards and values: 'gae' (generalized "
                "advantage estimation, Schulman et al. 2016, with gamma and lam). Register more with "
                "icegrt_trl.ppo.core.register_advantage_estimator."})
    gamma: float = field(default=1.0, metadata={"help": "Discount per token in GAE (1.0: none, as in trl 1.12)."})
    lam: float = field(default=0.95, metadata={
        "help": "GAE λ: 1 = Monte-Carlo returns (unbiased, noisy), 0 = one-step TD (biased by the critic)."})
    advantage_normalization: str = field(default="whiten", metadata={
        "help": "ICE-GRT's advantage normalization: 'whiten' ((A − mean)/std over every response token of all "
                "processes; trl 1.12 did it per process), 'group' (within the num_samples_per_prompt samples of each "
                "prompt), 'none'."})
    policy_loss_type: str = field(default="ppo_clip", metadata={
        "help": "Policy loss: 'ppo_clip' (clipped surrogate, Schulman et al. 2017, with cliprange). Register more with "
                "icegrt_trl.ppo.core.register_policy_loss."})
    cliprange: float = field(default=0.2, metadata={
        "help": "PPO ratio clip ε: the surrogate ignores ratios outside [1 − ε, 1 + ε] (trl 1.12's default 0.2)."})
    value_loss_type: str = field(default="clipped_mse", metadata={
        "help": "Value loss: 'clipped_mse' (½·max of the squared errors of the new and the clipped value, with "
                "cliprange_value; as trl 1.12). Register more with icegrt_trl.ppo.core.register_value_loss."})
    cliprange_value: float = field(default=0.2, metadata={
        "help": "Value clip: new values may move at most this far from the rollout's (trl 1.12: 0.2; Qwen: 0.15). "
                "Mind the scale of the returns (see reward_scaling)."})
    ptx_coef: float = field(default=0.0, metadata={
        "help": "Weight of the next-token loss on ptx_dataset added to each policy update (Qwen's pretraining "
                "gradient, InstructGPT's PPO-ptx) against the alignment tax; > 0 needs PPOTrainer(ptx_dataset=...)."})
    ptx_batch_size: int | None = field(default=None, metadata={
        "help": "Rows of ptx_dataset per micro-batch (default: the micro-batch size, per_device_train_batch_size / "
                "num_mini_batches)."})
    # ---------------------------------------------------------------- models and saving
    model_adapter_name: str | None = field(default=None, metadata={
        "help": "PEFT: the adapter to train when the model holds several (default: 'default' with peft_config, "
                "else the active one)."})
    ref_adapter_name: str | None = field(default=None, metadata={
        "help": "PEFT: an adapter to use as the reference (default: all adapters off, i.e. the base model)."})
    save_merged_model: bool = field(default=False, metadata={
        "help": "PEFT: save_model also writes the policy merged into its base to <output_dir>/merged (not possible "
                "on a 4-bit base: then only the adapters are saved, with a warning)."})
    merge_adapter_for_generation: bool = field(default=False, metadata={
        "help": "PEFT LoRA policies: fold the policy adapter into the base weights while generating, and copy the "
                "base's exact weights back afterwards. Generation then runs plain Linear layers (on SmolLM2 on a "
                "CPU: 3.5 to 2.4 s per rollout, docs/benchmarks.md); it holds one copy of the adapted weights "
                "meanwhile (the plan counts it). Not possible on a 4-bit/8-bit base or a sharded one (DeepSpeed "
                "ZeRO-3, FSDP): leave it False there. Log-probs always come from the training forward."})
    reuse_first_training_forward: bool = field(default=True, metadata={
        "help": "When one micro-batch holds the whole rollout (num_mini_batches=1 and gradient_accumulation_steps=1), "
                "take the old log-probs and values from the first training forward (the weights have not moved yet) "
                "instead of a forward of their own in the rollout, as TRL's GRPO does with num_iterations=1. Saves two "
                "of the rollout's four forwards; the first PPO ratio is exactly 1 either way. Not used during value "
                "warm-up (no policy forward then). False: always the separate rollout forward."})
    share_prompt_prefix: bool = field(default=True, metadata={
        "help": "Run the prompt tokens that every row of a forward starts with (a chat template's system prompt, a "
                "fixed instruction; at least 8 tokens) once per model instead of once per row; the rows attend to "
                "them through the KV cache. Same log-probs, values and scores up to float rounding, for the "
                "training forwards and the reference, value and reward forwards (not generation), with or without "
                "gradient checkpointing. Off by itself under reentrant checkpointing (use_reentrant=True), FSDP and "
                "ZeRO-3, and for a model without a plain KV cache (an encoder reward model, sliding-window "
                "attention). False: every row runs its whole prompt."})
    frozen_models_in_compute_dtype: bool = field(default=True, metadata={
        "help": "Under bf16/fp16: store the frozen reward and reference models' fp32 Linear weights in that dtype once "
                "(the same bits autocast computes with), instead of casting them on every forward; embeddings and "
                "norms stay fp32. Such a model must then be called under autocast (or .float() it). Under PEFT the "
                "reference is the shared base: load it with dtype bfloat16 for the same saving. False: as given."})
    cpu_bf16_eager_attention: bool = field(default=True, metadata={
        "help": "On a CPU with bf16: switch the models from SDPA to eager attention. PyTorch's CPU SDPA backward in "
                "bf16 is about 6x slower than eager attention's at chat lengths (docs/benchmarks.md). Llama, Mistral "
                "and Qwen2/3 models with grouped-query attention get an eager attention that reads each key/value "
                "head once for its group of query heads instead of copying it per head (same forward outputs). "
                "Generation switches back to SDPA while it samples. No effect on GPUs or in fp32."})
    cpu_bf16_padding_free: bool = field(default=True, metadata={
        "help": "With cpu_bf16_eager_attention: run the rollout, reference and training forwards of Llama, Mistral "
                "(without a sliding window) and Qwen2/3 models on each row's tokens without its left padding, packed "
                "into one sequence; attention still attends row by row (same outputs up to float rounding). "
                "SmolLM2-135M on chat prompts: one training step 1.48 s instead of 1.63 s (docs/benchmarks.md). "
                "Set False to run the padded rows as they are."})
    cpu_keep_freed_memory: bool = field(default=True, metadata={
        "help": "Training on a CPU with glibc (Linux): keep freed memory in the process (mallopt: no mmap, no heap "
                "trimming) so that the buffers each step allocates again reuse freed memory instead of fresh pages "
                "the kernel zero-fills one page fault at a time: fp32 updates of SmolLM2-135M took 16.9 s "
                "instead of 19.3 s (docs/benchmarks.md). Process-wide and not undone: the resident size stays at "
                "its peak between steps. No effect on GPUs or other C libraries."})
    # ---------------------------------------------------------------- vLLM rollouts (GRPOConfig's names)
    use_vllm: bool = field(default=False, metadata={
        "help": "Sample the rollouts with a vLLM server instead of model.generate (docs/vllm.md). After each "
                "update a LoRA policy's adapter is written and hot-loaded into the server; a full-weight policy is "
                "written whole and reloaded in place (slower: the whole model crosses the disk). Start the server "
                "with `icegrt-trl vllm-serve BASE_MODEL`."})
    vllm_mode: str = field(default="server", metadata={
        "help": "'server': the trainer sends generation requests to a vLLM server over HTTP (the only mode built). "
                "'colocate' (vLLM inside the training process, as GRPO's default) is not available yet: it is "
                "refused with a message."})
    vllm_server_base_url: str | None = field(default=None, metadata={
        "help": "Base URL of the vLLM server, e.g. http://127.0.0.1:8000. If set, vllm_server_host and "
                "vllm_server_port are ignored."})
    vllm_server_host: str = field(default="127.0.0.1", metadata={
        "help": "Host of the vLLM server; ignored if vllm_server_base_url is set."})
    vllm_server_port: int = field(default=8000, metadata={
        "help": "Port of the vLLM server; ignored if vllm_server_base_url is set."})
    vllm_server_timeout: float = field(default=240.0, metadata={
        "help": "Seconds to wait for the vLLM server to come up when the trainer starts; then a ConnectionError "
                "names the URL and how to start the server."})
    vllm_request_timeout: float = field(default=600.0, metadata={
        "help": "Seconds one generation or adapter request to the vLLM server may take before a TimeoutError (no "
                "weights change before it). A CPU server's first request is slow (its warm-up)."})
    vllm_adapter_dir: str | None = field(default=None, metadata={
        "help": "Folder where the policy is written for the server to load after each update (a LoRA policy's "
                "adapter, or a full-weight policy's safetensors); the server must be able to read it (same machine, "
                "or a shared file system). Default: <output_dir>/vllm_adapters. Only the latest one is kept."})
    vllm_importance_sampling_correction: bool = field(default=True, metadata={
        "help": "Correct for the engine's sampler not being the trainer's forward: weight each token's policy loss "
                "by π_trainer/π_engine of the old policy, as GRPO does (the weight multiplies the advantages, "
                "which for the clipped surrogate is the same). The engine/trainer log-prob gap is logged either "
                "way (vllm/*)."})
    vllm_importance_sampling_mode: str = field(default="token_truncate", metadata={
        "help": "'token_truncate' (truncated IS: per-token weights clamped to [clip_min, clip_max]), "
                "'token_mask' (tokens outside get weight 0), 'sequence_truncate' or 'sequence_mask' (one weight per "
                "sequence from the summed log-ratio). GRPO's default is 'sequence_mask'."})
    vllm_importance_sampling_clip_max: float | None = field(default=3.0, metadata={
        "help": "Upper bound C_max of the importance weights (truncate: clamped to it; mask: above it, weight 0)."})
    vllm_importance_sampling_clip_min: float | None = field(default=None, metadata={
        "help": "Lower bound C_min of the importance weights (truncate: clamped to it; mask: below it, weight 0)."})
    ds3_gather_for_generation: bool = field(default=True, metadata={
        "help": "DeepSpeed ZeRO-3 only: gather the sharded policy once for the whole generation (fast, needs the "
                "full model in memory on each GPU); False generates layer by layer (slow, fits larger models). "
                "As in trl 1.12."})
    sft_model_path: str | None = field(default=None, metadata={
        "help": "The policy to start from, read by the `ppo` stage of a recipe when model_name_or_path is not set "
                "(default there: 'stage:sft'). PPOTrainer itself takes the policy as `model=` and warns that it "
                "ignores this field (trl 1.12's trainer ignored it too; only its example script read it)."})
    reward_model_path: str | None = field(default=None, metadata={
        "help": "The reward model, read by the `ppo` stage of a recipe: 'stage:reward' (default there), a folder or "
                "Hub id of a sequence classifier, or 'gold' (the testbed's gold reward). PPOTrainer itself takes "
                "`reward_model=` and warns that it ignores this field."})
    # ---------------------------------------------------------------- data and logging
    dataset_num_proc: int | None = field(default=None, metadata={
        "help": "Processes for tokenizing the prompt datasets (datasets.map num_proc)."})
    num_sample_generations: int = field(default=10, metadata={
        "help": "How many times during training to write greedy completions of 4 eval_dataset prompts to "
                "<output_dir>/sample_generations.jsonl (0 disables; needs eval_dataset)."})
    recipe: str | None = field(default=None, metadata={
        "help": "Name of the recipe that produced the run, written to the model card (the CLI sets it)."})

    def __post_init__(self):
        errors = []
        from . import core

        for kind, name in (("advantage_estimator", self.advantage_estimator), ("policy_loss", self.policy_loss_type),
                           ("value_loss", self.value_loss_type),
                           ("kl_estimator", self.kl_estimator or "k1")):
            try:
                core.lookup(kind, name)
            except ValueError as err:
                errors.append(str(err))
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.kl_penalty == "loss" else "k1"
        elif self.kl_penalty == "loss" and self.kl_estimator == "k1":
            errors.append(
                "kl_penalty='loss' with kl_estimator='k1' does not regularize: the gradient of the k1 estimate "
                "(log π − log π_ref) on the policy's own samples has expectation 0. Use kl_estimator='k3' (the "
                "default with kl_penalty='loss', as in GRPO) or 'k2', or put the KL into the reward with "
                "kl_penalty='reward'.")
        if self.num_mini_batches >= 1 and self.per_device_train_batch_size % self.num_mini_batches:
            errors.append(
                f"num_mini_batches={self.num_mini_batches} must divide per_device_train_batch_size="
                f"{self.per_device_train_batch_size}: each pass over a rollout of per_device_train_batch_size × "
                "gradient_accumulation_steps sequences is split into num_mini_batches optimizer steps, each "
                "accumulated over gradient_accumulation_steps micro-batches of per_device_train_batch_size / "
                "num_mini_batches sequences (trl 1.12's split when gradient_accumulation_steps=1). Raise "
                "per_device_train_batch_size or lower num_mini_batches.")
        if self.response_length < 1:
            errors.append(f"response_length must be >= 1, got {self.response_length}.")
        for name in ("num_ppo_epochs", "num_mini_batches", "num_samples_per_prompt", "local_rollout_forward_batch_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.stop_token is not None and self.stop_token_id is not None:
            errors.append("You cannot set both `stop_token` and `stop_token_id`.")
        if self.stop_token not in (None, "eos"):
            errors.append(f"Unknown `stop_token` {self.stop_token!r}. Allowed values are 'eos' and None.")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p must lie in (0, 1], got {self.top_p}.")
        if self.kl_penalty not in ("reward", "loss"):
            errors.append(f"kl_penalty must be 'reward' or 'loss', got {self.kl_penalty!r}.")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            errors.append("missing_eos_penalty must be a positive value.")
        if self.value_warmup_steps < 0 or self.ptx_coef < 0:
            errors.append("value_warmup_steps and ptx_coef must be >= 0.")
        if self.reward_clip is not None and self.reward_clip <= 0:
            errors.append("reward_clip must be > 0.")
        if self.advantage_normalization == "group" and self.num_samples_per_prompt < 2:
            errors.append("advantage_normalization='group' needs num_samples_per_prompt >= 2.")
        local = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.num_samples_per_prompt >= 1 and local % self.num_samples_per_prompt:
            errors.append(
                f"The rollout of per_device_train_batch_size × gradient_accumulation_steps = "
                f"{self.per_device_train_batch_size} × {self.gradient_accumulation_steps} = {local} sequences does "
                f"not divide by num_samples_per_prompt={self.num_samples_per_prompt}; change one of them so that "
                "every prompt gets all its samples in one rollout."
            )
        if self.use_vllm and self.vllm_mode != "server":
            errors.append(
                f"vllm_mode={self.vllm_mode!r}: only vllm_mode='server' is available (a vLLM server started with "
                "`icegrt-trl vllm-serve`); colocate mode, vLLM inside the training process, is not built yet.")
        if self.vllm_importance_sampling_mode not in core.ENGINE_IS_MODES:
            errors.append(f"vllm_importance_sampling_mode={self.vllm_importance_sampling_mode!r}: use one of "
                          f"{', '.join(core.ENGINE_IS_MODES)}.")
        if errors:
            raise ValueError("Invalid PPOConfig: " + " ".join(errors))
        super().__post_init__()

    # Sizes, as trl 1.12 named them (per process). Derived, so they are properties, not fields.
    @property
    def local_batch_size(self) -> int:
        """Sequences per rollout on one process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_mini_batch_size(self) -> int:
        """Sequences per optimizer step on one process."""
        return self.local_batch_size // self.num_mini_batches

    @property
    def local_micro_batch_size(self) -> int:
        """Sequences per forward/backward (``per_device_train_batch_size / num_mini_batches``)."""
        return self.per_device_train_batch_size // self.num_mini_batches

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps made from one rollout."""
        return self.num_ppo_epochs * self.num_mini_batches


# trl 1.12's PPOConfig declared the sizes it computed at run time as fields; here they are derived properties (or
# TrainingArguments' own `world_size`). Passing one gets a message instead of "unexpected keyword argument".
DERIVED_TRL112_FIELDS = {
    "world_size": "the number of processes (TrainingArguments.world_size, from the launcher)",
    "num_total_batches": "the number of rollouts, ceil(total_episodes / (local_batch_size × world_size))",
    "micro_batch_size": "per_device_train_batch_size × world_size",
    "local_batch_size": "per_device_train_batch_size × gradient_accumulation_steps",
    "batch_size": "local_batch_size × world_size",
    "local_mini_batch_size": "local_batch_size / num_mini_batches",
    "mini_batch_size": "local_mini_batch_size × world_size",
}
_generated_init = PPOConfig.__init__


def _init_refusing_derived_fields(self, *args, **kwargs):
    derived = sorted(set(kwargs) & set(DERIVED_TRL112_FIELDS))
    if derived:
        raise ValueError(
            "PPOConfig: " + "; ".join(f"`{k}` is derived ({DERIVED_TRL112_FIELDS[k]})" for k in derived)
            + ". trl 1.12 computed these at run time too; remove them and set per_device_train_batch_size, "
              "gradient_accumulation_steps, num_mini_batches or total_episodes instead.")
    _generated_init(self, *args, **kwargs)


_init_refusing_derived_fields.__signature__ = __import__("inspect").signature(_generated_init)
PPOConfig.__init__ = _init_refusing_derived_fields
