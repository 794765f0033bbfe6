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
