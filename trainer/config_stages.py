"""Configs of the R1 stages around RL: supervised fine-tuning (`SFTConfig`) and rejection sampling
(`RejectionConfig`), each with its own `validate()`."""

from __future__ import annotations

from dataclasses import dataclass, field

from reward_server.config import RewardConfig
from trainer.config_checks import MAX_LR, _check_finite, _check_output_dir, _in_range, _require
from trainer.config_sections import ClusterConfig, DataConfig, LearnerConfig, ModelConfig, RolloutConfig
from trainer.config_train import TrainConfig


@dataclass(frozen=True)
class SFTDataConfig:
    train_path: str = "artifacts/data/sft/arithmetic/train.jsonl"
    """JSONL with fields `prompt` (the bare question) and `response` (the text after the rendered prompt)."""
    valid_path: str = "artifacts/data/sft/arithmetic/valid.jsonl"
    """Validation split, same fields; its loss is logged as `valid_loss`."""
    template: str = "r1_zero"
    """Prompt template name from `trainer.templates.TEMPLATES`, applied to `prompt`."""
    valid_size: int = 256
    """Validation samples used (the first ones of the file)."""
    max_sample_tokens: int = 256
    """Samples whose prompt + response + EOS is longer are dropped when loading (and counted)."""
    shuffle: bool = True
    """Shuffle the training samples every epoch (seeded by `SFTConfig.seed`)."""


@dataclass(frozen=True)
class SFTConfig:
    name: str = "sft"
    """Run name; outputs go to output_dir/name."""
    output_dir: str = "runs"
    """Where metrics, checkpoints and the exported Hugging Face model (hf/) are written."""
    seed: int = 0
    """Seed for the data order and initialisation."""
    epochs: int = 2
    """Passes over the training samples (R1 fine-tunes two epochs)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    samples_per_step: int = 64
    """Samples per optimizer step; the last step of an epoch takes what is left."""
    tokens_per_microbatch: int = 4096
    """Token budget of one forward/backward: rows x longest row (padding included) stays within it."""
    eval_every_steps: int = 20
    """Validation loss at the start, every this many steps and at the end (0: start and end)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    resume: bool = True
    """Continue from the latest checkpoint in the run directory if there is one."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune (`path`, `dtype`; the token limits of GRPO do not apply)."""
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    """Training and validation samples."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Megatron learner; `sequences_per_microbatch` caps the rows of a packed micro-batch."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the learner ranks run."""

    def validate(self) -> SFTConfig:
        """Check the configuration as a whole; returns self so calls can chain."""
        _check_finite(self, "")
        _require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                 f"name = {self.name!r}: must be a non-empty directory name without '/'")
        _in_range("epochs", self.epochs, 1)
        _in_range("max_steps", self.max_steps, 0)
        _in_range("samples_per_step", self.samples_per_step, 1)
        _in_range("eval_every_steps", self.eval_every_steps, 0)
        _in_range("checkpoint_every", self.checkpoint_every, 0)
        _in_range("data.valid_size", self.data.valid_size, 1)
        _in_range("data.max_sample_tokens", self.data.max_sample_tokens, 2)
        _require(self.tokens_per_microbatch >= self.data.max_sample_tokens,
                 f"tokens_per_microbatch = {self.tokens_per_microbatch} must hold the longest sample "
                 f"(data.max_sample_tokens = {self.data.max_sample_tokens})")
        from trainer.templates import TEMPLATES

        _require(self.data.template in TEMPLATES,
                 f"data.template = {self.data.template!r}: expected one of {', '.join(TEMPLATES)}")
        lr = self.learner
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                     "sequences_per_microbatch"):
            _in_range(f"learner.{name}", getattr(lr, name), 1)
        _in_range("learner.lr", lr.lr, 0, MAX_LR, low_open=True)
        _in_range("learner.grad_clip", lr.grad_clip, 0)
        _require(lr.tokens_per_microbatch == 0, f"learner.tokens_per_microbatch = {lr.tokens_per_microbatch}: SFT "
                 f"packs its micro-batches by tokens_per_microbatch (= {self.tokens_per_microbatch}); set that instead")
        _in_range("cluster.cpus_per_actor", self.cluster.cpus_per_actor, 0, low_open=True)
        _check_output_dir(self.output_dir)
        return self


@dataclass(frozen=True)
class RejectionConfig:
    name: str = "reject"
    """Job name; outputs go to output_dir/name (sft.jsonl, report.json)."""
    output_dir: str = "runs"
    """Where the kept samples and the report are written."""
    seed: int = 0
    """Sampling seed."""
    samples_per_prompt: int = 8
    """k: completions sampled per prompt."""
    prompts_per_batch: int = 64
    """Prompts sent to the engines at once."""
    max_prompts: int = 0
    """Use the first this many prompts of `data.train_path` (0: all)."""
    keep_per_prompt: int = 0
    """Keep at most this many accepted samples per prompt (0: every one that passes)."""
    max_paragraph_chars: int = 1000
    """Filter: a chain-of-thought paragraph longer than this rejects the sample."""
    max_foreign_share: float = 0.0
    """Filter: largest share of chain-of-thought words outside `reward.target_language` (0: none)."""
    reject_code: bool = True
    """Filter: a fenced code block in the chain of thought rejects the sample."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to sample from (`--checkpoint DIR` replaces `path`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts (`train_path`) and the template."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Engines and sampling settings."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Correctness is the reward actors' `correct`."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the engines and reward actors run."""

    def engine_config(self) -> TrainConfig:
        """The run config the engine and reward-group builders of `trainer.system` take."""
        return TrainConfig(name=self.name, output_dir=self.output_dir, seed=self.seed, model=self.model,
                           data=self.data, rollout=self.rollout, reward=self.reward, cluster=self.cluster)

    def validate(self) -> RejectionConfig:
        """Check the configuration as a whole; returns self so calls can chain."""
        for name in ("samples_per_prompt", "prompts_per_batch", "max_paragraph_chars"):
            _in_range(name, getattr(self, name), 1)
        _in_range("max_prompts", self.max_prompts, 0)
        _in_range("keep_per_prompt", self.keep_per_prompt, 0)
        _in_range("max_foreign_share", self.max_foreign_share, 0, 1)
        self.engine_config().validate(training=False)
        return self
