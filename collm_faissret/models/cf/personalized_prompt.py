"""Personalized prompt: a learned embedding per user and per item, trained from
scratch inside stage 2 and fed through the projector.

The baseline CoLLM contrasts with collaborative embeddings: same ID slots and
the same tables as MF, but learned only from the LLM's loss, with no
pretrained collaborative model. Use with freeze_rec: false and no pretrained_path.
"""
from ...registry import register
from .mf import MF


@register("cf_model", "personalized_prompt")
class PersonalizedPrompt(MF):
    supports_cold_start = False  # its vectors are learned through the LLM, not borrowed

    def __init__(self, n_users, n_items, rec_cfg):
        # Small init: the projector starts near a constant token, like a soft prompt.
        super().__init__(n_users, n_items, rec_cfg, init_std=0.02)
