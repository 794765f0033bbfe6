"""Every place where trl_basics touches TRL's or transformers' private API. Checked against TRL 1.16.0 and
transformers 5.x (``tests/test_seams.py`` pins each signature and the call order relied on).

A TRL upgrade is a change to this module and its pinned tests, nothing else. The trainers build on it through the
hooks below, which this module calls and which carry no leading underscore.

Overrides of private methods (each calls the parent and hands what it saw to a trl_basics hook):

==========================================  ==========================================================================
``_calculate_rewards``                      → ``on_rewards(rewards_per_func)``
``_get_per_token_logps_and_entropies``      records every pass while a recording is open (returned unchanged)
``_generate_and_score_completions``         → ``on_generation_round(out, passes)`` in training when the trainer
                                            ``rewrites_advantages``; ``on_evaluation_round(out)`` in evaluation
``_compute_loss``                           → ``policy_loss(model, inputs)`` (default: the parent's), then
                                            ``after_policy_loss(model, inputs, loss, policy_pass)``
``_save_checkpoint``                        → ``write_checkpoint_files(folder)``, then the completion marker and the
                                            rotation transformers would have done; a full disk ends it with
                                            ``checkpoints.DiskFullError``
``_load_optimizer_and_scheduler``           → ``load_checkpoint_extras(checkpoint)``
``_load_from_checkpoint`` (called)          by :meth:`TRLSeams.restore_finished_run`, for a resume at ``max_steps``
==========================================  ==========================================================================

Temporary changes of parent state (context managers): :func:`parent_beta`, :func:`single_generation_allowed`,
:meth:`TRLSeams.reference_logprobs_forced`, :meth:`TRLSeams.parent_kl_off` and :func:`rotation_deferred`.

vLLM: :func:`vllm_http_weight_sync` gives TRL's vLLM client (``trl.generation.vllm_generation.VLLMClient``, swapped
while the parent builds) the HTTP weight channel of ``vllm_cpu.py`` in server mode without CUDA, where TRL's NCCL
channel cannot start; :func:`vllm_engine_model` reads the model held by a colocated engine
(``vllm_generation.llm``), whose weights TRL loads through the same path.

The batch key ``num_items_in_batch`` (the generation batch's global loss-token count that TRL's ``dapo`` loss divides
by) is read through :meth:`TRLSeams.window_token_count`.

Private attributes read: ``_metrics`` (via :meth:`TRLSeams.metric_log` and :attr:`TRLSeams.parent_metrics`),
``_step``, ``_tokenizer``, ``_get_learning_rate`` and ``_get_output_dir``. Helpers of TRL's internal modules
(``trl.trainer.utils``, ``trl.models.utils``), which TRL does not export from ``trl``, are imported here and
nowhere else: ``nanstd``, ``get_callable_name``, ``is_async_callable``, ``get_config_model_id``, ``use_adapter`` and
``disable_gradient_checkpointing``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_callable_name, get_config_model_id, is_async_callable, nanstd, use_adapter

from . import checkpoints
from .metrics import DeferredMetrics

__all__ = [
    "FORWARD_KEYS",
    "TRLSeams",
    "disable_gradient_checkpointing",
    "get_callable_name",
    "get_config_model_id",
    "is_async_callable",
    "nanstd",
    "parent_beta",
    "rloo_generation_passes",
    "rotation_deferred",
    "single_generation_allowed",
    "vllm_engine_model",
    "vllm_http_weight_sync",
]

# Keyword inputs TRL forwards to the model for multimodal batches; passed through unchanged.
FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


@contextmanager
def parent_beta(args: Any, value: float) -> Iterator[None]:
    """Let the parent's ``__init__`` see ``beta=value`` (TRL loads a reference model only when ``beta != 0``)."""
    saved = args.beta
    args.beta = value
    try:
        yield
    finally:
        args.beta = saved


@contextmanager
def single_generation_allowed(config: Any) -> Iterator[None]:
    """Run the parent config's ``__post_init__`` with ``num_generations=1`` let through.

    TRL's configs refuse fewer than 2 generations because their own advantages need a group; estimators with a
    baseline that does not come from the group (moving average, returns, GAE) work with one sample per prompt.
    """
    requested = config.num_generations
    if requested == 1:
        config.num_generations = 2
    try:
        yield
    finally:
        if requested == 1:
            config.num_generations = 1


@contextmanager
def rotation_deferred(args: Any) -> Iterator[int | None]:
    """Hold ``args.save_total_limit`` at ``None`` while ``Trainer._save_checkpoint`` runs, so transformers rotates
    nothing before trl_basics has completed the new checkpoint; yields the user's limit for the rotation after."""
    limit = args.save_total_limit
    args.save_total_limit = None
    try:
        yield limit
    finally:
        args.save_total_limit = limit


def _http_weight_client(base: type) -> type:
    """TRL's ``VLLMClient`` with the weights sent over HTTP to the ``vllm_cpu.WeightReceiver`` worker extension."""
    from .vllm_cpu import BEGIN_METHOD, END_METHOD, EXTENSION, LOAD_METHOD, READY_METHOD, weight_chunks

    class HTTPWeightClient(base):
        def init_communicator(self, device: Any = 0) -> None:
            response = self.session.post(f"{self.base_url}/collective_rpc", json={"method": READY_METHOD})
            answers = response.json().get("results") if response.status_code == 200 else None
            if not answers or any(answer != "ready" for answer in answers):
                raise RuntimeError(
                    f"The vLLM server at {self.base_url} cannot receive weights from a trainer without CUDA (device "
                    f"{device}): start it with `--worker-extension-cls {EXTENSION}` (and VLLM_SERVER_DEV_MODE=1, "
                    f"which `trl vllm-serve` sets). Server answer: {response.status_code} {response.text[:200]}"
                )

        def update_named_params(self, metadata: Any, named_params: Any) -> None:
            url = f"{self.base_url}/collective_rpc"
            self._post(url, json={"method": BEGIN_METHOD})
            try:
                for payload in weight_chunks(named_params):
                    self._post(url, json={"method": LOAD_METHOD, "args": [payload]})
            finally:
                self._post(url, json={"method": END_METHOD})

        def close_communicator(self) -> None:
            """Nothing to close: every weight update is one HTTP request."""

    HTTPWeightClient.__name__ = HTTPWeightClient.__qualname__ = f"HTTPWeight{base.__name__}"
    return HTTPWeightClient


@contextmanager
def vllm_http_weight_sync(args: Any) -> Iterator[None]:
    """While the TRL parent builds: in vLLM server mode on a device that is not CUDA, its vLLM client sends the weights
    over HTTP (see ``vllm_cpu.py``) instead of through vLLM's NCCL weight-transfer engine, which needs CUDA. Does
    nothing in colocate mode, without vLLM, or on CUDA."""
    if not (getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "server"):
        yield
        return
    if args.device.type == "cuda":
        yield
        return
    from trl.generation import vllm_generation

    saved = vllm_generation.VLLMClient
    vllm_generation.VLLMClient = _http_weight_client(saved)
    try:
        yield
    finally:
        vllm_generation.VLLMClient = saved


def vllm_engine_model(trainer: Any) -> Any:
    """The ``torch.nn.Module`` a colocated vLLM engine generates with (TRL loads the trainer's weights into it)."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate":
        raise ValueError("the trainer has no colocated vLLM engine (use_vllm=True, vllm_mode='colocate')")
    return generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


def rloo_generation_passes(passes: list, reference_computed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sampling policy's and the reference's per-token log-probs from the passes TRL's ``RLOOTrainer`` made
    while scoring a generation round: TRL 1.16 computes π_old first, then π_ref when its ``beta != 0``."""
    expected = 2 if reference_computed else 1
    if len(passes) != expected:
        raise RuntimeError(
            f"expected {expected} log-prob passes during RLOO generation, saw {len(passes)}; this TRL version is not "
            "supported by trl_basics (see the pinned range in pyproject.toml)"
        )
    return passes[0][0], (passes[1][0] if reference_computed else None)


class TRLSeams:
    """The overrides and parent-state toggles of a trl_basics trainer; placed right before the TRL parent in the MRO.

    The hook methods here are the defaults (the parent's behaviour); :class:`~trl_basics.trainer_mixin.
    TrickTrainerMixin` and the trainers override them.
    """

    _logps_record: list | None = None

    # --- hooks (defaults: the parent's behaviour) ------------------------------------------------------------------

    rewrites_advantages: bool = False

    def on_rewards(self, rewards_per_func: torch.Tensor) -> None:
        """The gathered ``(N, num_reward_funcs)`` rewards of a generation round, as TRL computed them."""

    def on_generation_round(self, out: dict, passes: list) -> dict:
        return out

    def on_evaluation_round(self, out: dict) -> dict:
        return out

    def forced_reference_logprobs(self) -> bool:
        """Whether the parent must compute reference log-probs in this round although its ``beta`` is 0."""
        return False

    def policy_loss(self, model: Any, inputs: dict) -> torch.Tensor:
        return self.parent_policy_loss(model, inputs)

    def after_policy_loss(self, model: Any, inputs: dict, loss: torch.Tensor, policy_pass: tuple) -> torch.Tensor:
        return loss

    def write_checkpoint_files(self, folder: str) -> None:
        """trl_basics' own files of a checkpoint, written before it is marked complete."""

    def load_checkpoint_extras(self, checkpoint: str) -> None:
        """Load what ``write_checkpoint_files`` wrote, right after TRL loaded the optimizer and scheduler."""

    # --- overrides --------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.on_rewards(rewards_per_func)
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._logps_record is not None:
            self._logps_record.append(out)
        return out

    def _generate_and_score_completions(self, inputs):
        if not self.rewrites_advantages:
            return super()._generate_and_score_completions(inputs)  # the parent's advantages stand
        if not self.model.training:
            return self.on_evaluation_round(super()._generate_and_score_completions(inputs))
        with self.reference_logprobs_forced(), self.recording_logps() as passes:
            out = super()._generate_and_score_completions(inputs)
        return self.on_generation_round(out, passes)

    def _compute_loss(self, model, inputs):
        with self.recording_logps() as passes:
            loss = self.policy_loss(model, inputs)
        return self.after_policy_loss(model, inputs, loss, passes[0])

    def parent_policy_loss(self, model: Any, inputs: dict) -> torch.Tensor:
        """The TRL parent's own loss on this micro-batch."""
        return super()._compute_loss(model, inputs)

    def _save_checkpoint(self, model, trial):
        # The marker goes first and comes back last; transformers' rotation waits until our files are on disk.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        try:
            if self.args.should_save:
                checkpoints.begin_checkpoint(folder)
            with rotation_deferred(self.args) as save_total_limit:
                super()._save_checkpoint(model, trial)
                self.write_checkpoint_files(folder)
            self.accelerator.wait_for_everyone()  # every process has written its part
            if self.args.should_save:
                checkpoints.mark_complete(folder, self.state.global_step)
        except Exception as err:  # a full disk (or quota) ends the run with what is intact and how to go on
            cause = checkpoints.disk_full_cause(err, folder)
            if cause is None:
                raise
            step, remove = self.state.global_step, self.args.should_save
            raise checkpoints.disk_full_error(folder, cause, step, remove=remove) from err
        if self.args.should_save:
            checkpoints.rotate(run_dir, folder, save_total_limit, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_checkpoint_extras(checkpoint)

    def restore_finished_run(self, checkpoint: str) -> Any:
        """The end of a run whose newest checkpoint is at ``max_steps``: the checkpoint's weights and trainer state,
        with no step taken (transformers' ``train`` would take one more, past ``max_steps``). Returns the
        ``TrainOutput`` of a run that trained no step now; its loss is the finished run's, rebuilt from the
        checkpoint's logs (``checkpoints.logged_training_loss``)."""
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        self.load_checkpoint_extras(checkpoint)
        return TrainOutput(self.state.global_step, checkpoints.logged_training_loss(self.state.log_history), {})

    # --- parent state, changed for a while ----------------------------------------------------------------------------

    @contextmanager
    def recording_logps(self) -> Iterator[list]:
        """Collect the outputs of every ``_get_per_token_logps_and_entropies`` pass made inside the block."""
        saved, self._logps_record = self._logps_record, []
        try:
            yield self._logps_record
        finally:
            self._logps_record = saved

    @contextmanager
    def reference_logprobs_forced(self) -> Iterator[None]:
        """Hold the parent's ``beta`` non-zero while it scores a round, so it computes reference log-probs (it only
        tests ``beta != 0``), when ``forced_reference_logprobs()`` says so."""
        if self.beta != 0.0 or not self.forced_reference_logprobs():
            yield
            return
        self.beta = 1.0
        try:
            yield
        finally:
            self.beta = 0.0

    @contextmanager
    def parent_kl_off(self) -> Iterator[None]:
        """GRPO adds ``beta``·k3 to its loss when ``beta != 0``; hold it at 0 while the parent's loss runs."""
        saved, self.beta = self.beta, 0.0
        try:
            yield
        finally:
            self.beta = saved

    # --- private attributes, read through one door ---------------------------------------------------------------------

    @property
    def deferred_metrics(self) -> DeferredMetrics:
        """The metric sink whose tensors are read to the host once per optimizer step, all together (made and
        registered as a callback on first use)."""
        deferred = self.__dict__.get("_deferred_metrics")
        if deferred is None:
            deferred = self._deferred_metrics = DeferredMetrics()
            self.add_callback(deferred)
        return deferred

    @property
    def parent_metrics(self) -> dict:
        """The parent's metric lists by mode (``{"train": {name: [values]}, "eval": ...}``), for monitors to read."""
        return self._metrics

    @property
    def metric_mode(self) -> str:
        return "train" if self.model.training else "eval"

    def metric_log(self) -> Callable[[str, Any], None]:
        """The one way trl_basics logs a metric: ``log(name, value)`` into the parent's metric lists of the current
        mode. In training, tensors are read to the host with the step's others, once per optimizer step."""
        mode = self.metric_mode
        return self.deferred_metrics.sink(self._metrics[mode], defer=mode == "train")

    @property
    def accumulation_micro_step(self) -> int:
        """Index of the current micro-batch in the gradient accumulation window."""
        return self._step % self.args.gradient_accumulation_steps

    def window_token_count(self, inputs: dict) -> torch.Tensor | None:
        """The loss tokens of one accumulation window over every process, as TRL's ``loss_type="dapo"`` counts them:
        the generation batch's global count ``num_items_in_batch`` (computed when TRL scores the round, before any
        backward) times ``gradient_accumulation_steps / steps_per_generation``. Exactly the window's count when a
        generation batch is one window (TRL's default); its mean over the windows otherwise. ``None`` without it."""
        count = inputs.get("num_items_in_batch")
        if count is None:
            return None
        return count.clamp(min=1.0) * self.current_gradient_accumulation_steps / self.args.steps_per_generation

    def policy_learning_rate(self) -> float:
        """The policy optimizer's current learning rate (the configured one before the scheduler exists)."""
        return self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate

    @property
    def text_tokenizer(self) -> Any:
        """The tokenizer inside the processing class (the processor's, for vision models)."""
        return self._tokenizer

    def per_token_logps(self, model: Any, input_ids, attention_mask, logits_to_keep: int, **kwargs: Any) -> tuple:
        """TRL's ``(per_token_logps, entropies, aux_loss)`` of the last ``logits_to_keep`` tokens."""
        return self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs)

    @torch.no_grad()
    def completion_logprobs(self, out: dict, reference: bool = False, batch_size: int | None = None) -> torch.Tensor:
        """Per-token log-probs of a round's completions, no gradient: under the policy as it is now, or under the
        reference policy (the reference model, or the PEFT base with the adapter off, or its frozen "ref" adapter)."""
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        forward = {key: out[key] for key in FORWARD_KEYS if key in out}
        model, context = (
            self.model,
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
        )
        if reference:
            if self.ref_model is not None:
                model, context = self.ref_model, nullcontext()
            else:
                unwrapped = self.accelerator.unwrap_model(self.model)
                context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with context:
            logprobs, _, _ = self.per_token_logps(
                model, input_ids, attention_mask, out["completion_ids"].size(1), batch_size=batch_size, **forward
            )
        return logprobs
