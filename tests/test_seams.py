"""Pin the TRL methods the trainers override or call, so a TRL upgrade that moves a seam fails here first."""

import inspect

import pytest
import trl

SEAMS = {
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
    "_generate_and_score_completions": ["self", "inputs"],
    "_compute_loss": ["self", "model", "inputs"],
    "_save_checkpoint": ["self", "model", "trial"],
    "_load_optimizer_and_scheduler": ["self", "checkpoint"],
}
LOGPS = (
    "(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
    "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, pixel_attention_mask=None, "
    "spatial_shapes=None, num_tiles=None, image_sizes=None, token_type_ids=None, mm_token_type_ids=None, "
    "image_position_ids=None)"
)


@pytest.mark.parametrize("parent", [trl.RLOOTrainer, trl.GRPOTrainer], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", sorted(SEAMS))
def test_overridden_method_signatures(parent, name):
    assert list(inspect.signature(getattr(parent, name)).parameters) == SEAMS[name]


@pytest.mark.parametrize("parent", [trl.RLOOTrainer, trl.GRPOTrainer], ids=lambda c: c.__name__)
def test_logps_signature(parent):
    signature = inspect.signature(parent._get_per_token_logps_and_entropies)
    assert str(signature).startswith(LOGPS.rstrip(")"))


def test_trl_version_is_in_the_tested_range():
    major, minor = (int(part) for part in trl.__version__.split(".")[:2])
    assert (major, minor) == (1, 16)


def test_checkpoint_rotation_is_the_last_step_of_a_save_and_reads_save_total_limit():
    """trl_basics completes its checkpoint before rotation by holding ``args.save_total_limit`` at ``None`` during
    ``Trainer._save_checkpoint`` and rotating itself afterwards (``trl_basics/seams.py``)."""
    import transformers
    from transformers import trainer_utils

    source = inspect.getsource(transformers.Trainer._save_checkpoint)
    order = ["self.save_model(", "self._save_optimizer_and_scheduler(", "self._save_rng_state(", "save_to_json("]
    positions = [source.index(call) for call in [*order, "rotate_checkpoints("]]
    assert positions == sorted(positions), positions
    rotation = source[positions[-1] :]
    assert "save_total_limit=self.args.save_total_limit" in rotation
    assert "self." not in rotation.replace("self.args.", "").replace("self.state.", "")  # nothing is written after it
    assert list(inspect.signature(trainer_utils.rotate_checkpoints).parameters) == [
        "output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime", "checkpoint_prefix",
    ]  # fmt: skip
    for parent in (trl.RLOOTrainer, trl.GRPOTrainer):
        assert "super()._save_checkpoint(model, trial)" in inspect.getsource(parent._save_checkpoint)


def test_rotation_deletes_nothing_without_a_limit(tmp_path):
    from transformers.trainer_utils import rotate_checkpoints

    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    rotate_checkpoints(output_dir=str(tmp_path), save_total_limit=None, use_mtime=True)
    assert len(list(tmp_path.iterdir())) == 3
    rotate_checkpoints(output_dir=str(tmp_path), save_total_limit=1, use_mtime=True)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]


def test_train_signature_and_no_train_override_in_trl():
    import transformers

    assert list(inspect.signature(transformers.Trainer.train).parameters) == [
        "self", "resume_from_checkpoint", "trial", "ignore_keys_for_eval",
    ]  # fmt: skip
    for parent in (trl.RLOOTrainer, trl.GRPOTrainer):
        assert parent.train is transformers.Trainer.train


@pytest.mark.parametrize("parent", [trl.RLOOTrainer, trl.GRPOTrainer], ids=lambda c: c.__name__)
def test_private_attributes_the_seam_module_reads_are_where_it_expects(parent):
    """``seams.py`` reads ``_metrics[mode]``, ``_step``, ``_tokenizer``, ``_get_learning_rate()`` and
    ``_get_output_dir(trial=...)``; each must still be set up the same way."""
    import transformers

    source = inspect.getsource(inspect.getmodule(parent))
    assert "self._metrics = {" in source and '"train": defaultdict(list)' in source
    assert "self._tokenizer = processing_class" in source
    trainer_source = inspect.getsource(transformers.Trainer)
    assert "self._step" in source or "self._step" in trainer_source
    assert list(inspect.signature(transformers.Trainer._get_output_dir).parameters) == ["self", "trial"]
    assert list(inspect.signature(transformers.Trainer._get_learning_rate).parameters) == ["self"]
    assert "beta != 0.0" in inspect.getsource(parent._generate_and_score_completions)


def test_rloo_scores_a_round_with_the_sampling_pass_before_the_reference_pass():
    """``seams.rloo_generation_passes`` takes TRL RLOO's first log-prob pass as π_old and the second (made only when
    ``beta != 0``) as π_ref."""
    source = inspect.getsource(trl.RLOOTrainer._generate_and_score_completions)
    old = source.index("old_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(")
    ref = source.index("ref_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(")
    assert old < ref
    assert source.count("self._get_per_token_logps_and_entropies(") == 3  # π_old, π_ref, π_ref via the adapter


def test_the_window_token_count_is_the_one_trl_s_dapo_loss_divides_by():
    """``TRLSeams.window_token_count`` reads ``num_items_in_batch`` from the scored round and rescales it to one
    accumulation window exactly as GRPO's ``dapo`` normaliser does (times num_processes: a global count)."""
    scored = inspect.getsource(trl.GRPOTrainer._generate_and_score_completions)
    assert "num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()" in scored
    assert '"num_items_in_batch": num_items_in_batch' in scored
    loss = inspect.getsource(trl.GRPOTrainer._compute_loss)
    assert 'normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes' in loss
    assert "normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation" in loss
