"""CoLLM's answer head in fp32: finding the decoder body's final norm (``final_norm_name``) and
applying it to fp32 hidden states with its weights upcast (``norm_fp32``).

``CoLLM.answer_logits`` runs the final norm and the Yes/No rows of the LM head outside the
body, in fp32 whatever the body's dtype; these are the parts of that which depend on the LM
family (the norm's name and class), not on CoLLM.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")  # LLaMA/Qwen2, GPT-2, OPT, ...


def final_norm_name(body):
    """The name of the decoder body's final norm module (the input of the LM head), or None
    when the body has none under a known name (its output is then taken as normed)."""
    for name in FINAL_NORMS:
        if isinstance(body._modules.get(name), nn.Module):
            return name
    return None


def norm_fp32(norm, h):
    """norm applied to fp32 h [..., H] with its weights upcast -> fp32 [..., H].

    HF's RMSNorms compute in the input's dtype and promote a bf16 weight, so fp32 in
    gives fp32 out; torch's LayerNorm refuses mixed dtypes; anything else gets fp32
    copies of its parameters for the call (slower: torch.func.functional_call).
    """
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(h, norm.normalized_shape, None if norm.weight is None else norm.weight.float(),
                            None if norm.bias is None else norm.bias.float(), norm.eps)
    out = norm(h)
    if out.dtype != torch.float32:
        out = torch.func.functional_call(norm, {k: v.float() for k, v in norm.named_parameters()}, (h,))
    return out
