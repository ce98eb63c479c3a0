"""CoLLM: a causal LM that answers Yes/No, with collaborative embeddings as tokens.

prompt ids -> input embeddings; the ID-slot positions get FECE projections of
the CF model's user/item embeddings -> LM -> a score read at the last (answer)
position; BCE against the label. The score is the logit of the "Yes" token
(CoLLM's) or logit(Yes) - logit(No), the log-odds of a softmax over the two
answers (TALLRec's), which sits near 0 for a pretrained LM from the first step.
"""
import logging
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..datasets.rec_dataset import collate
from ..errors import ConfigError
from ..prompts import SLOT_ITEM, SLOT_USER, PromptBuilder
from ..registry import register
from .answer_head import final_norm_name, norm_fp32
from .backbone import resolve_quantization
from .collm_build import StageError, build_collm
from .fece import Projector
from .frozen_prefix import frozen_forward
from .shared_prefix import shared_forward

log = logging.getLogger(__name__)


@register("model", "collm")
class CoLLM(nn.Module):
    """Parameter groups: "lora" (adapter), "fece" (projector), "rec" (CF model).

    A stage is the set of groups left trainable; everything else is frozen.
    The model owns its inputs: ``prompts`` (the PromptBuilder of its template,
    tokenizer and ``proj_token_num``), ``pad_id``, ``collate_fn`` and
    ``history_len`` (history ids per row its CF model reads).
    """

    def __init__(self, llm, tokenizer, answer_ids, cf_model=None, proj_token_num: int = 1,
                 proj_mid_times: int = 10, proj_drop: float = 0.0, use_slots: bool = False,
                 answer_score: str = "yes_logit", template: str = None, max_txt_len: int = 1024,
                 hybrid_llm_weight: float = None, hybrid_cf=None):
        """answer_ids: (yes_id, no_id), the tokens the LM emits after the prompt's answer marker.
        hybrid_cf: under answer_score hybrid, a fixed CF model whose logit the score adds instead of
        ``cf_model``'s (model.hybrid_cf_path); None: cf_model's."""
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.template = template
        # One route for proj_token_num: the projector and the prompt's slot count read the same argument.
        self.prompts = None if template is None else PromptBuilder(tokenizer, template, proj_token_num, max_txt_len)
        self.use_slots = use_slots
        self.cf = cf_model if use_slots else None
        self.proj = None
        if use_slots:
            llm_dim = llm.get_input_embeddings().embedding_dim
            self.proj = Projector(cf_model.dim, llm_dim, proj_token_num, proj_mid_times, proj_drop)
        self.yes_id, self.no_id = answer_ids
        self.answer_score = answer_score
        # answer_score hybrid: the weight of the CF model's logit in the score (0-d; in the "fece"
        # group, so it trains with the projector and is kept in checkpoints). Starting at 1, the
        # first score is the CF model's plus the LLM's near-zero log-odds.
        self.cf_weight = None
        if answer_score == "hybrid":
            if not use_slots:
                raise StageError("model.answer_score hybrid adds the CF model's logit, but the prompt has no "
                                 "<UserID>/<TargetItemID> slot and so no CF model")
            self.cf_weight = nn.Parameter(torch.ones(()))
        # hybrid_llm_weight: a learned weight on the LLM's log-odds (0-d, "fece" group). From 0 the
        # first scores are the CF model's; its gradient (the LLM's log-odds x the residual) grows it
        # only as far as the LLM's part helps. None: no such weight (the LLM's part enters as is).
        self.llm_weight = None
        if hybrid_llm_weight is not None:  # with hybrid only (check_config)
            self.llm_weight = nn.Parameter(torch.tensor(float(hybrid_llm_weight)))
        # hybrid_cf: a second CF model, fixed, whose logit the hybrid score adds (model.hybrid_cf_path).
        # A submodule so that it moves with the model; in no parameter group, so never trained or saved.
        self.hybrid_cf = None
        if hybrid_cf is not None:
            if self.cf_weight is None:
                raise StageError("model.hybrid_cf_path gives the CF logit of a hybrid score, but "
                                 f"model.answer_score is {answer_score}")
            self.hybrid_cf = hybrid_cf.requires_grad_(False).eval()
        # run.fit_blend's scoring pass sets it: final_scores then returns [B, 2], the LLM's log-odds
        # and the CF logit, unweighted (runners/blend.py fits the two weights on them)
        self.blend_parts = False
        self._answer_cache = None  # _answer_parts' lookups (a plain tuple: nn.Module registers none of it)

    @classmethod
    def from_config(cls, cfg, data, device, backbone=None):
        """This model from the config for the loaded data: see ``collm_build.build_collm``."""
        return build_collm(cls, cfg, data, device, backbone)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Rules of arch collm beyond the schema (config validation calls it before any file is read)."""
        m = cfg.model
        if not m.llama_model:
            raise ConfigError("model.llama_model is required for arch collm (a local save_pretrained directory)")
        if not m.prompt_path:
            raise ConfigError("model.prompt_path is required for arch collm")
        quantization = resolve_quantization(m)
        if cfg.run.distributed == "fsdp" and quantization != "none":
            raise ConfigError(f"run.distributed fsdp with model.quantization {quantization}: bitsandbytes' "
                              "quantized weights cannot be sharded by FSDP2 here; use run.distributed=ddp (each "
                              "rank holds the quantized model) or quantization none with fsdp")
        if m.hybrid_cf_path and str(m.answer_score) != "hybrid":
            raise ConfigError(f"model.hybrid_cf_path {m.hybrid_cf_path} gives the CF logit of a hybrid score, but "
                              f"model.answer_score is {m.answer_score}; set answer_score hybrid or "
                              "hybrid_cf_path null")
        if m.hybrid_llm_weight is not None and str(m.answer_score) != "hybrid":
            raise ConfigError(f"model.hybrid_llm_weight {m.hybrid_llm_weight} weighs the LLM's part of a hybrid "
                              f"score, but model.answer_score is {m.answer_score}; set answer_score hybrid or "
                              "hybrid_llm_weight null")
        if m.cold_start.enabled and not m.freeze_rec and not cfg.run.evaluate:
            raise ConfigError("model.cold_start.enabled needs model.freeze_rec: true (borrowed vectors are "
                              "computed once from the CF weights, which must not change while training)")

    @property
    def zero_shot(self) -> bool:
        """Evaluate-only may run without a checkpoint: a text-only prompt scores with the
        backbone as loaded (LoRA starts as the identity); a projector needs training."""
        return not self.use_slots

    @property
    def history_len(self) -> int:
        """History ids per row the CF models read (0 without one): the projector's and the hybrid score's."""
        return max(0 if self.cf is None else self.cf.history_len,
                   0 if self.hybrid_cf is None else self.hybrid_cf.history_len)

    def train(self, mode: bool = True):
        """As nn.Module.train; a hybrid score's own CF model (hybrid_cf) stays in eval mode: its logit is
        a fixed term of the score, with no dropout in training."""
        super().train(mode)
        if self.hybrid_cf is not None:
            self.hybrid_cf.eval()
        return self

    @property
    def collate_fn(self):
        """RecRows items -> a batch, prompts right-padded with this tokenizer's pad id."""
        return partial(collate, pad_id=self.pad_id)

    def param_groups(self):
        """{"lora": [(name, param)], "fece": [...], "rec": [...]} — every tunable part by group."""
        groups = {"lora": [], "fece": [], "rec": []}
        for name, p in self.named_parameters():
            if name.startswith("proj.") or name in ("cf_weight", "llm_weight"):
                groups["fece"].append((name, p))
            elif name.startswith("cf."):
                groups["rec"].append((name, p))
            elif "lora_" in name:
                groups["lora"].append((name, p))
        return groups

    def set_stage(self, train_lora: bool, train_proj: bool, train_rec: bool):
        """Freeze everything, then unfreeze the chosen groups."""
        for p in self.parameters():
            p.requires_grad_(False)
        for group, on in (("lora", train_lora), ("fece", train_proj), ("rec", train_rec)):
            for _, p in self.param_groups()[group]:
                p.requires_grad_(on)

    def saved_state_dict(self):
        """The parameters a checkpoint keeps: adapter + projector always, CF weights when tuned.

        The 7B backbone and a frozen pretrained CF model are never copied; a
        stage-2 checkpoint still holds stage 1's LoRA, so it evaluates alone.
        Detached parameters where they live (a sharded run's are DTensors: the
        runner gathers them).
        """
        groups = self.param_groups()
        keep = groups["lora"] + groups["fece"] + [(n, p) for n, p in groups["rec"] if p.requires_grad]
        return {n: p.detach() for n, p in keep}

    @property
    def has_artifacts(self) -> bool:
        """Whether a run directory gets files beside the best checkpoint: the adapter, with LoRA."""
        return bool(self.param_groups()["lora"])

    def save_artifacts(self, out_dir: str, state: dict) -> None:
        """The LoRA adapter in peft's own format (``out_dir/adapter``), loadable by
        PeftModel.from_pretrained. state: ``saved_state_dict()`` gathered to full tensors
        (a sharded run's parameters are this rank's shards only)."""
        lora = {k[len("llm."):]: v for k, v in state.items() if k.startswith("llm.")}
        self.llm.save_pretrained(os.path.join(out_dir, "adapter"), state_dict=lora)

    def freeze_for_scoring(self, enabled: bool = True) -> bool:
        """The weights will not change again: fold LoRA into the base weights (peft's merge_adapter,
        parameter names kept) where that is exact. Returns whether it merged.

        Only for fp32, unquantized weights: a bf16 or quantized base would round the adapter's
        small update away in part. FSDP shards are left alone (a merge needs whole weights).
        Called by evaluate-only runs, whose model does nothing but score.
        """
        llm = self.llm
        if not enabled or not hasattr(llm, "merge_adapter"):
            return False
        weights = [p for n, p in llm.named_parameters() if "lora_" not in n]
        if any(p.dtype != torch.float32 or type(p) is not nn.Parameter for p in weights):
            return False
        llm.merge_adapter()
        log.info("LoRA merged into the base weights for scoring")
        return True

    def inputs_embeds(self, batch):
        """input_ids [B, L] -> embeddings [B, L, H] with ID slots filled by FECE outputs
        (at collate's slot_pos [B, 2k] when the batch has them, else found by fill_slots)."""
        emb_layer = self.llm.get_input_embeddings()
        emb = emb_layer(batch["input_ids"])
        if self.use_slots:
            slot = batch["slot"]
            n = emb.shape[0]
            # one projector call and one fill for both kinds: fewer small ops per step
            cf = torch.cat([self.cf.user_embed(batch), self.cf.item_embed(batch["iid"])])  # [2B, d]
            tok = self.proj(cf).to(emb.dtype)  # [2B, k, H]: users, then items
            tok = torch.cat([tok[:n], tok[n:]], 1)  # [B, 2k, H]
            pos = batch.get("slot_pos")  # [B, 2k] from collate: the same places fill_slots finds
            if pos is not None and pos.shape[1] == tok.shape[1]:
                rows = torch.arange(n, device=pos.device).unsqueeze(1)
                emb = emb.index_put((rows, pos), tok)
            else:
                emb = fill_slots(emb, slot, tok)
        return emb

    def body_mask(self, mask, device):
        """mask [B, L] (1 token, 0 right padding) -> the attention mask the body gets, or None.

        Right padding (collate) needs no padding mask: under the causal mask no real token
        attends to the padding after it (a padding query attends to what comes before it, so
        no softmax row is empty, and its output is never read), and each row's positions are
        0 .. n_b - 1, the body's default (position ids None). So:

        * on the host: None. SDPA runs its causal kernel, which skips the blocks above the
          diagonal; eager attention and a sliding window get the library's own causal masks.
        * on a GPU with SDPA: the causal mask as a boolean [1, 1, L, L]. Given no mask,
          transformers looks for packed sequences in the position ids it makes, and reads
          the answer back (a host sync per forward); a 4D mask is used as it is.
        * on a GPU otherwise (eager, or a sliding window shorter than the prompt): the 2D
          mask, from which transformers builds its own.
        """
        if device.type == "cpu":
            return None
        config = self.llm.config
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if config._attn_implementation != "sdpa" or (window is not None and mask.shape[-1] > window):
            return mask
        pos = torch.arange(mask.shape[-1], device=mask.device)
        return (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, L(query), L(key)]

    def causal_lm(self):
        """The transformers causal LM under any peft wrapper (LoRA stays injected in its layers)."""
        llm = self.llm
        return llm.get_base_model() if hasattr(llm, "get_base_model") else llm

    def _answer_parts(self):
        """(body, final norm's name in the body or None, final norm or None, LM head, softcap or
        None, answer row index [2]) of self.llm, looked up once (a few tens of microseconds per
        call otherwise: a visible share of a small model's step); looked up again if the LM
        object is replaced."""
        parts = self._answer_cache
        if parts is None or parts[0] is not self.llm:
            lm = self.causal_lm()
            body = lm.get_decoder()
            name = final_norm_name(body)
            rows = torch.tensor([self.yes_id, self.no_id])
            parts = (self.llm, body, name, None if name is None else getattr(body, name),
                     lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None), rows)
            self._answer_cache = parts
        return parts[1:]

    def hidden_states(self, inputs_embeds, attention_mask, position_ids, **kwargs):
        """The LM body's last hidden states BEFORE its final norm: [B, L, H] in the body's dtype.

        The LM head is not run: ``answer_logits`` applies the final norm and the two
        answer rows of the head in fp32 on the positions that are read. kwargs go to
        the body (a KV cache, ``use_cache``). The body's own final norm is an identity
        for this call, so it is not computed at all (over every position, for nothing).
        """
        body, name, norm, _, _, _ = self._answer_parts()
        if norm is not None:
            body._modules[name] = _IDENTITY  # the attribute lookup the body's forward makes
        try:
            out = body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       **kwargs)
        finally:
            if norm is not None:
                body._modules[name] = norm
        return out.last_hidden_state

    def answer_logits(self, hidden):
        """hidden [..., H] (``hidden_states`` at the positions read) -> answer scores [...] in fp32.

        The final norm and the Yes/No rows of the LM head (two rows of [V, H]; a tied
        head is the embedding matrix) in fp32 whatever the body's dtype: a bf16 head
        rounds logits near 10 to steps of 0.0625, and AUC counts the ties as half.
        """
        _, _, norm, head, cap, rows = self._answer_parts()
        if rows.device != head.weight.device:  # made once per device: a host-to-device copy per call would wait
            rows = rows.to(head.weight.device)
            self._answer_cache = self._answer_cache[:-1] + (rows,)
        bias = getattr(head, "bias", None)
        # autocast off: it would cast linear's fp32 inputs back to bf16 whatever .float() did
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.float()
            if norm is not None:
                h = norm_fp32(norm, h)
            out = F.linear(h, head.weight.index_select(0, rows).float(),
                           None if bias is None else bias.index_select(0, rows).float())  # [..., 2]
        if cap:  # Gemma-2's head: tanh soft-capping of every logit
            out = torch.tanh(out / cap) * cap
        if self.answer_score in ("yes_minus_no", "hybrid"):
            return out[..., 0] - out[..., 1]
        return out[..., 0]

    def final_scores(self, hidden, batch):
        """hidden [B, H] at each row's answer position -> [B] fp32 scores: ``answer_logits`` (times
        ``llm_weight`` where model.hybrid_llm_weight gives one), plus
        under answer_score hybrid ``cf_weight`` x the CF model's own logit of the row (batch's
        uid / iid / his, in the batch's row order; ``hybrid_cf``'s where there is one, else the
        projector's CF model's), computed in fp32; a row with a finite
        ``cf_logit`` [B] in the batch (a training row's out-of-fold logit, datasets/cf_logits.py)
        takes that one instead. With ``blend_parts`` set: [B, 2], the log-odds and the CF logit
        unweighted."""
        logits = self.answer_logits(hidden)
        if self.blend_parts:  # run.fit_blend's scoring pass: each part alone, unweighted
            return torch.stack([logits.float(), self.cf_logits(batch)], -1)
        if self.llm_weight is not None:
            logits = self.llm_weight.float() * logits
        if self.cf_weight is not None:
            logits = logits + self.cf_weight.float() * self.cf_logits(batch)
        return logits

    def cf_logits(self, batch):
        """[B] fp32: the CF logit a hybrid score adds for the batch's rows (``hybrid_cf``'s where there
        is one, else the projector's CF model's); a row's finite ``cf_logit`` in the batch instead."""
        with torch.autocast(batch["uid"].device.type, enabled=False):
            cf = (self.cf if self.hybrid_cf is None else self.hybrid_cf).score(batch).float()
            given = batch.get("cf_logit")
            if given is not None:  # NaN: none given (a sampled negative): the CF model's own
                cf = torch.where(torch.isnan(given), cf, given.float())
        return cf

    def forward(self, batch):
        """batch: input_ids/attention_mask/slot [B, L] (right-padded), read_pos/uid/iid/label [B], his [B, h].

        Returns {"loss": scalar or None, "logits": [B] float32 answer scores (see answer_score)}.
        A batch in a shared-prefix layout (pack_* / kv_* keys, datasets/packing.py) goes through shared_prefix.py.
        """
        if "pack_ids" in batch or "kv_ids" in batch:
            return shared_forward(self, batch)
        if batch.get("frozen_len"):  # set by the training loop (models/frozen_prefix.py why_whole)
            return frozen_forward(self, batch)
        last = batch.get("read_pos")  # collate's: the one place a row's answer position is computed
        if last is None:
            raise ValueError("CoLLM.forward: the batch has no 'read_pos' (each row's answer position, [B]); "
                             "build batches with the model's collate_fn")
        emb = self.inputs_embeds(batch)
        hidden = self.hidden_states(emb, self.body_mask(batch["attention_mask"], emb.device), None, use_cache=False)
        logits = self.final_scores(hidden[torch.arange(len(last), device=last.device), last], batch)
        loss = None
        if "label" in batch:
            loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        return {"loss": loss, "logits": logits}


_IDENTITY = nn.Identity()  # stands in for the body's final norm while hidden_states runs it


def fill_slots(emb, slot, tokens):
    """emb [B, L, H] with row b's user slots (slot [B, L] == SLOT_USER, k per row) set to
    tokens[b, :k] and its item slots (SLOT_ITEM, k per row) to tokens[b, k:], each kind
    in order left to right; tokens [B, 2k, H].

    gather + where instead of masked_scatter: the backward of masked_scatter
    runs masked_select, whose output size the host must read (one device sync
    per slot kind per training step on CUDA); this has none.
    """
    k = tokens.shape[1] // 2
    is_user, is_item = slot == SLOT_USER, slot == SLOT_ITEM
    order = torch.where(is_item, is_item.long().cumsum(-1) + (k - 1), is_user.long().cumsum(-1) - 1)  # [B, L]
    placed = torch.gather(tokens, 1, order.clamp(min=0).unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return torch.where((is_user | is_item).unsqueeze(-1), placed, emb)
