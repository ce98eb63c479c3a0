"""The two prompt baselines CoLLM compares against, as rec_model choices."""
import pytest
import torch
from test_models import _train_and_diff


@pytest.mark.parametrize("rec_model, cf_params", [
    ("soft_prompt", {"cf.user_vec", "cf.item_vec"}),
    ("personalized_prompt", {"cf.user.weight", "cf.item.weight"}),
])
def test_prompt_baseline_trains_projector_and_its_vectors(env, tmp_path, rec_model, cf_params):
    model, before, changed = _train_and_diff(
        env.config("stage2", tmp_path / rec_model), "run.iters_per_epoch=3", f"model.rec_model={rec_model}",
        "model.rec_config.pretrained_path=null", "model.freeze_rec=false")
    proj = {n for n in before if n.startswith("proj.")}
    assert {n for n in before if n.startswith("cf.")} == cf_params
    assert changed == proj | cf_params  # LoRA stays frozen


def test_soft_prompt_gives_every_row_the_same_vectors():
    from collm_faissret.models.cf import CFConfig
    from collm_faissret.models.cf.soft_prompt import SoftPrompt

    model = SoftPrompt(5, 7, CFConfig(embedding_size=4))
    batch = {"uid": torch.tensor([1, 2, 4]), "iid": torch.tensor([0, 3, 6])}
    users, items = model.user_embed(batch), model.item_embed(batch["iid"])
    assert users.shape == (3, 4) and items.shape == (3, 4)
    assert torch.equal(users[0], users[2]) and torch.equal(items[0], items[1])
